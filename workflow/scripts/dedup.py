from hemaflow.jobs import start_job
from hemaflow.subgroup import dedup_files

start_job(snakemake)
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
