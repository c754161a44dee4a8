from hemaflow.jobs import start_job
from hemaflow.synth.stages import gate_real_acceptance_stage

start_job(snakemake)
gate_real_acceptance_stage(
    snakemake.input.classifier,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.params.gate,
    out_csv=snakemake.output[0],
)
