from hemaflow.jobs import start_job
from hemaflow.synth.stages import write_variant_routes

start_job(snakemake)
write_variant_routes(snakemake.input[0], snakemake.wildcards.synth_variant, snakemake.output[0])
