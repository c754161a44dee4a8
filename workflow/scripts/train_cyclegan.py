import torch

from hemaflow.logs import setup_logging
from hemaflow.normalize.stages import train_pair

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_pair(
    snakemake.input.source_images,
    snakemake.input.source_index,
    snakemake.input.target_images,
    snakemake.input.target_index,
    snakemake.params.options,
    pair=f"{snakemake.wildcards.source}_to_{snakemake.wildcards.target}",
    state_root=snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
