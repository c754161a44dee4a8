import json

from hemaflow.classify.leave_one_out import lolo_table
from hemaflow.jobs import start_job

start_job(snakemake)
results = []
for path in snakemake.input:
    with open(path) as handle:
        results.append(json.load(handle))
lolo_table(results, snakemake.output.table, snakemake.output.chart)
