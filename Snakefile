# hemaflow: multi-lab white-blood-cell images -> clean, stain-normalized, balanced
# training data and a validated classifier. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/dedup.smk"
include: "workflow/rules/subgroup.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/synthesis.smk"
include: "workflow/rules/classify.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
