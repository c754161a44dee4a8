from hemaflow.jobs import start_job
from hemaflow.synth.rare_study import train_study_meta
from hemaflow.synth.rare_study_plan import RareStudySettings
from hemaflow.synth.stages import read_pool

start_job(snakemake)
images, index = read_pool(snakemake.input.images, snakemake.input.index)
train_study_meta(
    images,
    index,
    snakemake.params.domain,
    RareStudySettings.from_dict(snakemake.params.settings),
    int(snakemake.wildcards.rare_seed),
    snakemake.output.model,
    snakemake.params.state_root,
)
