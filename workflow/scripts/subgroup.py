from hemaflow.jobs import start_job
from hemaflow.subgroup import subgroup_files

start_job(snakemake)
subgroup_files(
    snakemake.config,
    list(snakemake.input.manifests),
    snakemake.input.assignments,
    out_manifest=snakemake.output.manifest,
    out_counts=snakemake.output.counts,
    out_quarantine=snakemake.output.quarantine,
    out_summary=snakemake.output.summary,
)
