from hemaflow.jobs import start_job
from hemaflow.synth.stages import write_routes

start_job(snakemake)
write_routes(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
