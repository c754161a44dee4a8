from hemaflow.jobs import retry_options, start_job
from hemaflow.synth.fewshot import FewShotOptions
from hemaflow.synth.stages import adapt_fewshot_stage

start_job(snakemake)
adapt_fewshot_stage(
    snakemake.input.meta,
    snakemake.input.images,
    snakemake.input.index,
    snakemake.wildcards.synth_class,
    retry_options(snakemake, snakemake.params.options, FewShotOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_losses=snakemake.output.losses,
    out_summary=snakemake.output.summary,
)
