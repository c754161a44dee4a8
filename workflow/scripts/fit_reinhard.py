from hemaflow.jobs import start_job
from hemaflow.normalize.stages import fit_reinhard

start_job(snakemake)
fit_reinhard(snakemake.input.images, snakemake.input.index, snakemake.output[0])
