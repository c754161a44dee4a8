from hemaflow.jobs import start_job
from hemaflow.subgroup import domain_cache_files

start_job(snakemake)
domain_cache_files(
    snakemake.input.manifest,
    list(snakemake.input.images),
    list(snakemake.params.datasets),
    snakemake.wildcards.domain,
    out_images=snakemake.output.images,
    out_index=snakemake.output.index,
)
