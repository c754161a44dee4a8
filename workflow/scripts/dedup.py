from hemaflow.logs import setup_logging
from hemaflow.subgroup import dedup_files

setup_logging(snakemake.log[0])
dedup_files(
    snakemake.config,
    list(snakemake.input.manifests),
    list(snakemake.input.images),
    list(snakemake.params.datasets),
    out_assignments=snakemake.output.assignments,
    out_groups=snakemake.output.groups,
    out_pairs=snakemake.output.pairs,
    out_summary=snakemake.output.summary,
)
