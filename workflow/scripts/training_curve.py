from hemaflow.jobs import start_job
from hemaflow.plots import plot_training_curve

start_job(snakemake)
plot_training_curve(snakemake.input[0], snakemake.output[0], snakemake.params.title)
