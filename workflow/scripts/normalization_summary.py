from hemaflow.logs import setup_logging
from hemaflow.normalize.evaluate import collect_metrics

setup_logging(snakemake.log[0])
collect_metrics(list(snakemake.input), snakemake.output[0])
