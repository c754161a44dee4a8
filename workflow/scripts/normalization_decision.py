from hemaflow.jobs import start_job
from hemaflow.normalize.decide import decide_pair_files, decide_without_cyclegan

start_job(snakemake)
source, target = snakemake.wildcards.source, snakemake.wildcards.target
if not snakemake.params.cyclegan:
    decide_without_cyclegan(source, target, snakemake.params.fallback, snakemake.output[0])
else:
    decide_pair_files(
        source,
        target,
        snakemake.input.get("source_images"),
        snakemake.input.get("source_index"),
        snakemake.input.get("target_images"),
        snakemake.input.get("target_index"),
        snakemake.input.get("model"),
        snakemake.params.fallback,
        snakemake.input.get("stats"),
        out_json=snakemake.output[0],
        max_images=snakemake.params.max_images,
    )
