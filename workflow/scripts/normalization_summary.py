from hemaflow.jobs import start_job
from hemaflow.normalize.evaluate import collect_metrics

start_job(snakemake)
collect_metrics(
    list(snakemake.input.metrics),
    snakemake.output[0],
    decision_paths=list(snakemake.input.get("decisions", [])),
)
