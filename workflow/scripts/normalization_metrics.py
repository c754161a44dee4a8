from hemaflow.jobs import start_job
from hemaflow.normalize.evaluate import evaluate_pair_files

start_job(snakemake)
evaluate_pair_files(
    f"{snakemake.wildcards.source}_to_{snakemake.wildcards.target}",
    snakemake.input.source_images,
    snakemake.input.source_index,
    snakemake.input.target_images,
    snakemake.input.target_index,
    snakemake.input.get("model"),
    snakemake.input.stats,
    out_json=snakemake.output.metrics,
    out_grid=snakemake.output.grid,
    max_images=snakemake.params.max_images,
)
