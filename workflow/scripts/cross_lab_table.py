from hemaflow.classify.stages import cross_lab_stage
from hemaflow.jobs import start_job

start_job(snakemake)
test_sets = {
    method: {
        domain: (
            snakemake.input[f"images_{method}_{domain}"],
            snakemake.input[f"index_{method}_{domain}"],
        )
        for domain in snakemake.params.domains
    }
    for method in snakemake.params.methods
}
cross_lab_stage(
    snakemake.input.model,
    snakemake.params.train_domain,
    test_sets,
    snakemake.params.n_boot,
    snakemake.params.seed,
    out_csv=snakemake.output.table,
    out_png=snakemake.output.chart,
    tta=snakemake.params.tta,
)
