from hemaflow.data.ingest import ingest_to_files
from hemaflow.jobs import start_job

start_job(snakemake)
ingest_to_files(
    snakemake.config,
    snakemake.wildcards.dataset,
    workers=snakemake.threads,
    out_manifest=snakemake.output.manifest,
    out_images=snakemake.output.images,
    out_quarantine=snakemake.output.quarantine,
)
