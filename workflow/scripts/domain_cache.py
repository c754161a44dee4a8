from hemaflow.logs import setup_logging
from hemaflow.subgroup import domain_cache_files

setup_logging(snakemake.log[0])
domain_cache_files(
    snakemake.input.manifest,
    list(snakemake.input.images),
    list(snakemake.params.datasets),
    snakemake.wildcards.domain,
    out_images=snakemake.output.images,
    out_index=snakemake.output.index,
)
