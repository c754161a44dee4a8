from hemaflow.jobs import start_job
from hemaflow.synth.curve import concat_curves

start_job(snakemake)
concat_curves(snakemake.input.tables).to_csv(snakemake.output[0], index=False)
