from hemaflow.classify.ablation import ablation_stage
from hemaflow.jobs import start_job

start_job(snakemake)
ablation_stage(
    list(snakemake.params.variants),
    list(snakemake.input.summaries),
    list(snakemake.input.per_class),
    out_csv=snakemake.output.table,
    out_png=snakemake.output.chart,
)
