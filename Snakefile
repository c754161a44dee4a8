# hemaflow: multi-lab white-blood-cell images -> clean, stain-normalized, balanced
# training data and a validated classifier. See README.md.
from snakemake.utils import min_version

min_version("9.0")


# The default config only when none is given: a user's --configfile replaces it instead of
# being merged into it (a merge cannot remove the default datasets); keys a config leaves
# out take the schema's defaults.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/dedup.smk"
include: "workflow/rules/subgroup.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/synthesis.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/rare_study.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
