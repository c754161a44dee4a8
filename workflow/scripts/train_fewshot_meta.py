from hemaflow.jobs import retry_options, start_job
from hemaflow.synth.fewshot import FewShotOptions
from hemaflow.synth.stages import train_fewshot_meta_stage

start_job(snakemake)
train_fewshot_meta_stage(
    snakemake.input.images,
    snakemake.input.index,
    snakemake.input.routes,
    snakemake.params.large_min,
    retry_options(snakemake, snakemake.params.options, FewShotOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
