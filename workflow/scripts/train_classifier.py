from hemaflow.classify.stages import train_stage
from hemaflow.classify.train import ClassifierOptions
from hemaflow.jobs import retry_options, start_job

start_job(snakemake)
train_stage(
    snakemake.input.pool_images,
    snakemake.input.pool_index,
    snakemake.input.get("balanced_images"),
    snakemake.input.get("balanced_manifest"),
    retry_options(snakemake, snakemake.params.options, ClassifierOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
