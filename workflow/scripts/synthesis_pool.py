from hemaflow.jobs import start_job
from hemaflow.synth.stages import write_pool

start_job(snakemake)
write_pool(
    {
        domain: (snakemake.input[f"images_{domain}"], snakemake.input[f"index_{domain}"])
        for domain in snakemake.params.domains
    },
    snakemake.params.subsample,
    snakemake.params.seed,
    out_images=snakemake.output.images,
    out_index=snakemake.output.index,
)
