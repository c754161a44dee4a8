from hemaflow.jobs import start_job
from hemaflow.synth.metric_stages import quality_curve_stage

start_job(snakemake)
quality_curve_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.params.generator,
    snakemake.input.model,
    snakemake.input.losses,
    snakemake.params.curve,
    snakemake.params.seed,
    out_csv=snakemake.output.table,
    out_plot=snakemake.output.plot,
    class_name=snakemake.wildcards.get("synth_class"),
    meta_losses_csv=snakemake.input.get("meta_losses"),
    judge_model=snakemake.input.judge,
    min_confidence=snakemake.params.min_confidence,
    thresholds_csv=snakemake.input.thresholds,
)
