from hemaflow.jobs import start_job
from hemaflow.normalize.stages import write_plan

start_job(snakemake)
write_plan(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
