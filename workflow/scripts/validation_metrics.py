from hemaflow.jobs import start_job
from hemaflow.synth.metric_stages import validation_metrics_stage

start_job(snakemake)
validation_metrics_stage(
    snakemake.wildcards.synth_class,
    snakemake.wildcards.generator,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.samples,
    snakemake.input.candidates,
    snakemake.params.max_images,
    out_json=snakemake.output[0],
    seed=snakemake.params.seed,
)
