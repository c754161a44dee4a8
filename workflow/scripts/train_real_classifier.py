from hemaflow.jobs import retry_options, start_job
from hemaflow.synth.real_classifier import RealClassifierOptions
from hemaflow.synth.stages import train_classifier_stage

start_job(snakemake)
train_classifier_stage(
    snakemake.input.images,
    snakemake.input.index,
    retry_options(snakemake, snakemake.params.options, RealClassifierOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
