from hemaflow.jobs import start_job
from hemaflow.summary import write_headline

start_job(snakemake)
write_headline(
    snakemake.output[0],
    data_summary=snakemake.input.data_summary,
    classifier_evaluation=snakemake.input.classifier_evaluation,
    normalization_metrics=snakemake.input.get("normalization_metrics"),
    synthesis_gate=snakemake.input.get("synthesis_gate"),
    synthesis_balancing=snakemake.input.get("synthesis_balancing"),
    gate_real_acceptance=snakemake.input.get("gate_real_acceptance"),
    settings=snakemake.params.settings,
)
