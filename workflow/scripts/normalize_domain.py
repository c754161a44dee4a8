from hemaflow.jobs import start_job
from hemaflow.normalize.apply import normalize_domain_files

start_job(snakemake)
normalize_domain_files(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.plan,
    snakemake.wildcards.domain,
    snakemake.wildcards.method,
    cyclegan_models=snakemake.params.models,
    classical_stats=snakemake.params.stats,
    out_images=snakemake.output.images,
    out_index=snakemake.output.index,
    decision_files=snakemake.params.decisions,
)
