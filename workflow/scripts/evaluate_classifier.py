from hemaflow.classify.stages import evaluate_stage
from hemaflow.jobs import start_job

start_job(snakemake)
evaluate_stage(
    snakemake.input.model,
    snakemake.input.pool_images,
    snakemake.input.pool_index,
    snakemake.params.n_boot,
    snakemake.params.seed,
    snakemake.params.tta,
    out_summary=snakemake.output.summary,
    out_per_class=snakemake.output.per_class,
    out_confusion_csv=snakemake.output.confusion_csv,
    out_confusion_png=snakemake.output.confusion_png,
    out_predictions=snakemake.output.predictions,
)
