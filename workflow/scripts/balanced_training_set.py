from pathlib import Path

from hemaflow.jobs import start_job
from hemaflow.synth.stages import balanced_stage

start_job(snakemake)
models = snakemake.params.models
samples = {
    Path(images).parent.name: (images, candidates, models[Path(images).parent.name])
    for images, candidates in zip(snakemake.input.samples, snakemake.input.candidates)
}
balanced_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    samples,
    snakemake.input.gates,
    out_images=snakemake.output.images,
    out_manifest=snakemake.output.manifest,
    out_gate=snakemake.output.gate,
)
