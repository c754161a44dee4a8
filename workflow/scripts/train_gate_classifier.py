import torch

from hemaflow.logs import setup_logging
from hemaflow.synth.stages import train_gate_classifier_stage

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_gate_classifier_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.params.options,
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
