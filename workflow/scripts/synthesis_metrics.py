from pathlib import Path

import torch

from hemaflow.logs import setup_logging
from hemaflow.synth.stages import metrics_stage

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
samples = {
    Path(images).parent.name: (images, candidates)
    for images, candidates in zip(snakemake.input.samples, snakemake.input.candidates)
}
metrics_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    samples,
    snakemake.params.max_images,
    snakemake.params.fid_min_images,
    out_csv=snakemake.output.metrics,
    out_grid=snakemake.output.grid,
    seed=snakemake.params.seed,
)
