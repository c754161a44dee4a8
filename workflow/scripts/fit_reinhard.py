from hemaflow.logs import setup_logging
from hemaflow.normalize.stages import fit_reinhard

setup_logging(snakemake.log[0])
fit_reinhard(snakemake.input.images, snakemake.input.index, snakemake.output[0])
