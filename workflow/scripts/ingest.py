from hemaflow.data.ingest import ingest_to_files
from hemaflow.logs import setup_logging

setup_logging(snakemake.log[0])
ingest_to_files(
    snakemake.config,
    snakemake.wildcards.dataset,
    workers=snakemake.threads,
    out_manifest=snakemake.output.manifest,
    out_images=snakemake.output.images,
    out_quarantine=snakemake.output.quarantine,
)
