from hemaflow.jobs import start_job
from hemaflow.json_file import write_json
from hemaflow.synth.rare_study import run_level_seed
from hemaflow.synth.rare_study_plan import RareStudySettings, study_dir_of
from hemaflow.synth.stages import read_pool

start_job(snakemake)
images, index = read_pool(snakemake.input.images, snakemake.input.index)
results = run_level_seed(
    images,
    index,
    snakemake.params.domain,
    RareStudySettings.from_dict(snakemake.params.settings),
    int(snakemake.wildcards.rare_level),
    int(snakemake.wildcards.rare_seed),
    study_dir_of(snakemake.output[0]),
    snakemake.params.state_root,
    meta_model=snakemake.input.get("meta"),
)
write_json(results, snakemake.output[0], default=float)
