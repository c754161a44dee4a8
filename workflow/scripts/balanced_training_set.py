from pathlib import Path

from hemaflow.jobs import start_job
from hemaflow.synth.stages import balanced_stage

start_job(snakemake)
models = snakemake.params.models
samples = {
    Path(images).parent.name: (images, candidates, models[Path(images).parent.name], quality)
    for images, candidates, quality in zip(
        snakemake.input.samples, snakemake.input.candidates, snakemake.input.quality
    )
}
balanced_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    samples,
    snakemake.input.gates,
    snakemake.input.judge,
    snakemake.params.targets,
    snakemake.params.require_quality,
    out_images=snakemake.output.images,
    out_manifest=snakemake.output.manifest,
    out_gate=snakemake.output.gate,
    out_balancing=snakemake.output.balancing,
    seed=snakemake.params.seed,
    max_synthetic_share=snakemake.params.max_synthetic_share,
)
