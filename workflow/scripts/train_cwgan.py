from hemaflow.jobs import retry_options, start_job
from hemaflow.synth.cwgan import CWGANOptions
from hemaflow.synth.stages import train_cwgan_stage

start_job(snakemake)
train_cwgan_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    snakemake.input.classifier,
    retry_options(snakemake, snakemake.params.options, CWGANOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
