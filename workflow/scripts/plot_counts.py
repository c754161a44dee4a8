import pandas as pd

from hemaflow.jobs import start_job
from hemaflow.plots import plot_class_counts

start_job(snakemake)
plot_class_counts(pd.read_csv(snakemake.input[0]), snakemake.output[0])
