from hemaflow.logs import setup_logging
from hemaflow.synth.stages import write_pool

setup_logging(snakemake.log[0])
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
