# Helpers shared by every rule: validated config, input functions, final targets.
from pathlib import Path

from snakemake.utils import validate

from hemaflow.config import (
    SCHEMA_PATH,
    canonical_json,
    resolve_data_root,
    validate_config,
)
from hemaflow.data.layouts import dataset_input_files

# Our own check first: its messages name the key; then the schema via Snakemake.
validate_config(config)
validate(config, str(SCHEMA_PATH), set_default=True)

RESULTS = config["results_dir"]
DATA_ROOT = resolve_data_root(config)
DATASETS = list(config["datasets"])
DOMAINS = sorted({spec["domain"] for spec in config["datasets"].values()})


wildcard_constraints:
    dataset="|".join(DATASETS),
    domain="|".join(DOMAINS),


def dataset_root(dataset):
    return DATA_ROOT / config["datasets"][dataset]["path"]


def ingest_inputs(wildcards):
    """Every file of the dataset, so that an added or changed image reruns its ingest."""
    return dataset_input_files(
        dataset_root(wildcards.dataset), config["datasets"][wildcards.dataset]
    )


def ingest_params(wildcards):
    """Everything that changes what ingest writes, in a canonical form."""
    return canonical_json(
        {
            "dataset": config["datasets"][wildcards.dataset],
            "image_size": config["image_size"],
            "ingest": config["ingest"],
        }
    )


def dedup_params():
    return canonical_json(
        {
            "dedup": config["dedup"],
            "class_map": config["class_map"],
            "datasets": config["datasets"],
        }
    )


def subgroup_params():
    return canonical_json(
        {
            "class_map": config["class_map"],
            "subgroup": config["subgroup"],
            "split": config["split"],
            "datasets": config["datasets"],
        }
    )


def per_dataset(pattern):
    return expand(pattern, dataset=DATASETS)


def get_final_output():
    """Targets of the stages built so far (config flags will add later stages)."""
    return [
        f"{RESULTS}/data/manifest.parquet",
        f"{RESULTS}/data/counts.csv",
        f"{RESULTS}/data/counts.png",
        f"{RESULTS}/data/quarantine.csv",
        f"{RESULTS}/data/summary.json",
        f"{RESULTS}/dedup/groups.csv",
        *expand(f"{RESULTS}/cache/{{domain}}/images.npy", domain=DOMAINS),
    ]
