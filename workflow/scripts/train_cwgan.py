import torch

from hemaflow.logs import setup_logging
from hemaflow.synth.stages import train_cwgan_stage

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_cwgan_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    snakemake.input.classifier,
    snakemake.params.options,
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
