from hemaflow.jobs import start_job
from hemaflow.synth.stages import generate_stage

start_job(snakemake)
generate_stage(
    snakemake.wildcards.synth_class,
    snakemake.input.routes,
    snakemake.input.model,
    snakemake.input.classifier,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.params.gate,
    snakemake.params.seed,
    snakemake.params.max_candidates_factor,
    out_images=snakemake.output.images,
    out_candidates=snakemake.output.candidates,
    out_summary=snakemake.output.summary,
    route=snakemake.wildcards.generator,
)
