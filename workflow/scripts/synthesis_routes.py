from hemaflow.logs import setup_logging
from hemaflow.synth.stages import write_routes

setup_logging(snakemake.log[0])
write_routes(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
