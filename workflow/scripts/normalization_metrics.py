import torch

from hemaflow.logs import setup_logging
from hemaflow.normalize.evaluate import evaluate_pair_files

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
evaluate_pair_files(
    f"{snakemake.wildcards.source}_to_{snakemake.wildcards.target}",
    snakemake.input.source_images,
    snakemake.input.source_index,
    snakemake.input.target_images,
    snakemake.input.target_index,
    snakemake.input.get("model"),
    snakemake.input.stats,
    out_json=snakemake.output.metrics,
    out_grid=snakemake.output.grid,
    max_images=snakemake.params.max_images,
)
