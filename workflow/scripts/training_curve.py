from hemaflow.logs import setup_logging
from hemaflow.plots import plot_training_curve

setup_logging(snakemake.log[0])
plot_training_curve(snakemake.input[0], snakemake.output[0], snakemake.params.title)
