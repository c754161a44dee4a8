from hemaflow.classify.leave_one_out import leave_one_lab_out
from hemaflow.classify.train import ClassifierOptions
from hemaflow.jobs import retry_options, start_job

start_job(snakemake)
files = {
    domain: (snakemake.input[f"images_{domain}"], snakemake.input[f"index_{domain}"])
    for domain in snakemake.params.domains
}
leave_one_lab_out(
    files,
    snakemake.wildcards.held_out,
    snakemake.params.domains,
    retry_options(snakemake, snakemake.params.options, ClassifierOptions),
    snakemake.params.state_root,
    out_model=snakemake.output.model,
    out_json=snakemake.output.result,
    n_boot=snakemake.params.n_boot,
    seed=snakemake.params.seed,
    method=snakemake.wildcards.method,
    tta=snakemake.params.tta,
    balance=snakemake.params.balance_labs,
)
