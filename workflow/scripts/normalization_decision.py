from hemaflow.jobs import start_job
from hemaflow.normalize.decide import decide_pair_files

start_job(snakemake)
decide_pair_files(
    snakemake.wildcards.source,
    snakemake.wildcards.target,
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
