from pathlib import Path

from hemaflow.jobs import start_job
from hemaflow.synth.metric_stages import metrics_stage

start_job(snakemake)
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
