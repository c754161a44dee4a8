import json
from pathlib import Path

from hemaflow.jobs import start_job
from hemaflow.synth.rare_study_plan import RareStudySettings
from hemaflow.synth.rare_study_report import write_report

start_job(snakemake)
results = []
for path in snakemake.input:
    with open(path) as handle:
        results += json.load(handle)
settings = RareStudySettings.from_dict(snakemake.params.settings)
write_report(results, settings, Path(snakemake.output.summary).parent)
