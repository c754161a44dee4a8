from hemaflow.jobs import retry_options, start_job
from hemaflow.normalize.stages import train_pair
from hemaflow.train.cyclegan import CycleGANOptions

start_job(snakemake)
train_pair(
    snakemake.input.source_images,
    snakemake.input.source_index,
    snakemake.input.target_images,
    snakemake.input.target_index,
    retry_options(snakemake, snakemake.params.options, CycleGANOptions),
    pair=f"{snakemake.wildcards.source}_to_{snakemake.wildcards.target}",
    state_root=snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
