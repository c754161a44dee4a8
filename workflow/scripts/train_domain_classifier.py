import torch

from hemaflow.classify.stages import train_domain_stage
from hemaflow.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_domain_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.wildcards.domain,
    snakemake.params.options,
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
