import torch

from hemaflow.logs import setup_logging
from hemaflow.normalize.apply import normalize_domain_files

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
normalize_domain_files(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.plan,
    snakemake.wildcards.domain,
    snakemake.wildcards.method,
    cyclegan_models=snakemake.params.models,
    reinhard_stats=snakemake.params.stats,
    out_images=snakemake.output.images,
    out_index=snakemake.output.index,
)
