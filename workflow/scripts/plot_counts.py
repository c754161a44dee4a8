import pandas as pd

from hemaflow.logs import setup_logging
from hemaflow.plots import plot_class_counts

setup_logging(snakemake.log[0])
plot_class_counts(pd.read_csv(snakemake.input[0]), snakemake.output[0])
