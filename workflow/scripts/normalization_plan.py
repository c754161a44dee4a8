from hemaflow.logs import setup_logging
from hemaflow.normalize.stages import write_plan

setup_logging(snakemake.log[0])
write_plan(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
