from hemaflow.jobs import start_job
from hemaflow.normalize.stages import fit_classical

start_job(snakemake)
fit_classical(
    snakemake.wildcards.classical,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.output[0],
)
