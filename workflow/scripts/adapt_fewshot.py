import torch

from hemaflow.logs import setup_logging
from hemaflow.synth.stages import adapt_fewshot_stage

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
adapt_fewshot_stage(
    snakemake.input.meta,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.wildcards.synth_class,
    snakemake.params.options,
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
