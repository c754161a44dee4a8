# Helpers shared by every rule: validated config, input functions, final targets.
import json
import os
from pathlib import Path

from snakemake.utils import validate

from hemaflow import __version__ as LIBRARY_VERSION
from hemaflow.config import (
    SCHEMA_PATH,
    canonical_json,
    resolve_data_root,
    validate_config,
)
from hemaflow.data.layouts import dataset_input_files
from hemaflow.data.listing import ListingOptions

# Our own check first: its messages name the key; then the schema via Snakemake.
validate_config(config)
validate(config, str(SCHEMA_PATH), set_default=True)

RESULTS = config["results_dir"]
DATA_ROOT = resolve_data_root(config)
LISTING = ListingOptions.from_config(config, DATA_ROOT)
DATASETS = list(config["datasets"])
DOMAINS = sorted({spec["domain"] for spec in config["datasets"].values()})


# Resumable training state lives outside declared outputs (a failed job's outputs are
# deleted); keyed by options and data, see hemaflow.normalize.stages.
STATE_DIR = os.environ.get("HEMAFLOW_STATE_DIR", ".hemaflow-state")
NORMALIZATION = config["normalization"]


def retry_batch_divisor(wildcards, attempt):
    """Training jobs halve their batch on each retry (out of memory, say): 1, 2, 4."""
    return 2 ** (attempt - 1)


wildcard_constraints:
    dataset="|".join(DATASETS),
    domain="|".join(DOMAINS),
    source="|".join(DOMAINS),
    target="|".join(DOMAINS),
    method="none|reinhard|macenko|cyclegan",
    classical="reinhard|macenko",


def dataset_root(dataset):
    return DATA_ROOT / config["datasets"][dataset]["path"]


def ingest_inputs(wildcards):
    """Every file of the dataset, so that an added or changed image reruns its ingest."""
    return dataset_input_files(
        dataset_root(wildcards.dataset),
        config["datasets"][wildcards.dataset],
        LISTING,
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


def normalization_params():
    return {
        "method": NORMALIZATION["method"],
        "target": NORMALIZATION["target"],
        "direction": NORMALIZATION["direction"],
    }


def cyclegan_params():
    """The CycleGAN options as given (preset + overrides), in canonical form."""
    return json.loads(canonical_json(NORMALIZATION["cyclegan"]))


def read_plan():
    with open(checkpoints.normalization_plan.get().output[0]) as handle:
        return json.load(handle)


def plan_destinations(plan, domain):
    """Domains that images of ``domain`` are mapped onto."""
    return sorted({d for d in plan["mapping"].get(domain, {}).values() if d != domain})


def pair_model(source, target):
    return f"{RESULTS}/normalization/cyclegan/{source}_to_{target}/model.pt"


def has_cyclegan(source, target):
    """Whether the pair (oriented source -> target) trains a CycleGAN. Not when its source
    lab has no cell-type labels and ``normalization.unlabelled`` is fallback: nothing
    downstream trains or is tested on those images, so they get the fallback's classical
    method (and its decision file says so)."""
    if NORMALIZATION["method"] != "cyclegan":
        return False
    return not (
        NORMALIZATION["unlabelled"] == "fallback"
        and NORMALIZATION["fallback"] != "none"
        and source not in LABELLED_DOMAINS
    )


def domain_pairs(wildcards):
    """The plan's pairs whose model maps this domain's images (none for the target
    itself: its copy need not wait for any model)."""
    plan = read_plan()
    domain = wildcards.domain
    wanted = set(plan_destinations(plan, domain))
    return [
        (a, b)
        for a, b in plan["pairs"]
        if (a == domain and b in wanted) or (b == domain and a in wanted)
    ]


def normalize_domain_models(wildcards):
    """The CycleGANs that map this domain's images onto their destinations."""
    if wildcards.method != "cyclegan":
        return {}
    return {
        f"{a}_to_{b}": pair_model(a, b)
        for a, b in domain_pairs(wildcards)
        if has_cyclegan(a, b)
    }


def pair_decision(source, target):
    return f"{RESULTS}/normalization/decisions/{source}_to_{target}.json"


def normalize_domain_decisions(wildcards):
    """With the CycleGAN: the decision (CycleGAN or fallback) of each pair that maps this
    domain's images."""
    if wildcards.method != "cyclegan":
        return {}
    return {f"{a}_to_{b}": pair_decision(a, b) for a, b in domain_pairs(wildcards)}


def normalize_domain_stats(wildcards):
    """A classical method's statistics of each destination of this domain: the method's
    own, or with the CycleGAN those of the fallback (which a pair may fall back to)."""
    method = wildcards.method
    if method == "cyclegan":
        method = NORMALIZATION["fallback"]
    if method not in ("reinhard", "macenko"):
        return {}
    return {
        target: f"{RESULTS}/normalization/{method}/{target}/stats.json"
        for target in plan_destinations(read_plan(), wildcards.domain)
    }


def normalize_domain_inputs(wildcards):
    inputs = {
        "plan": checkpoints.normalization_plan.get().output[0],
        "images": f"{RESULTS}/cache/{wildcards.domain}/images.npy",
        "index": f"{RESULTS}/cache/{wildcards.domain}/index.parquet",
    }
    for name, path in normalize_domain_models(wildcards).items():
        inputs[f"model_{name}"] = path
    for target, path in normalize_domain_stats(wildcards).items():
        inputs[f"stats_{target}"] = path
    for name, path in normalize_domain_decisions(wildcards).items():
        inputs[f"decision_{name}"] = path
    return inputs


def normalize_domain_gpu(wildcards):
    # by method only: resources are evaluated before the plan (a checkpoint) exists
    return 1 if wildcards.method == "cyclegan" else 0


# Scheduling priority of the jobs between the synthesis pool and the classifier's
# evaluation (the main job's longest path once the CycleGANs are trained) over the jobs
# that feed only the report (normalization and synthesis metrics, curves): these run in
# the gaps beside the chain, where a core would otherwise wait (docs/benchmarks.md)
CHAIN_PRIORITY = 1


def labelled_first(wildcards):
    """Scheduling priority: the normalization of a labelled domain feeds the synthesis
    pool (the chain's priority), an unlabelled domain's (raabin) feeds only the report, so
    it may run later, beside the synthesis jobs."""
    domain = wildcards.get("source", wildcards.get("domain"))
    return CHAIN_PRIORITY if domain in LABELLED_DOMAINS else 0


def decision_gpu(wildcards):
    """A decision measures KIDs (a GPU job) only where it compares a CycleGAN with the
    fallback; otherwise it writes what the config says."""
    compares = NORMALIZATION["fallback"] != "none" and has_cyclegan(
        wildcards.source, wildcards.target
    )
    return 1 if compares else 0


def normalization_metrics_inputs(wildcards):
    inputs = {
        "source_images": f"{RESULTS}/cache/{wildcards.source}/images.npy",
        "source_index": f"{RESULTS}/cache/{wildcards.source}/index.parquet",
        "target_images": f"{RESULTS}/cache/{wildcards.target}/images.npy",
        "target_index": f"{RESULTS}/cache/{wildcards.target}/index.parquet",
        "stats": f"{RESULTS}/normalization/reinhard/{wildcards.target}/stats.json",
    }
    if has_cyclegan(wildcards.source, wildcards.target):
        inputs["model"] = pair_model(wildcards.source, wildcards.target)
    return inputs


def normalization_decision_inputs(wildcards):
    """The pair's caches (validation rows are read), its CycleGAN and the fallback's
    statistics of the target; nothing with fallback none (no comparison to make)."""
    fallback = NORMALIZATION["fallback"]
    source, target = wildcards.source, wildcards.target
    if fallback == "none" or not has_cyclegan(source, target):
        return {}
    return {
        "source_images": f"{RESULTS}/cache/{source}/images.npy",
        "source_index": f"{RESULTS}/cache/{source}/index.parquet",
        "target_images": f"{RESULTS}/cache/{target}/images.npy",
        "target_index": f"{RESULTS}/cache/{target}/index.parquet",
        "model": pair_model(source, target),
        "stats": f"{RESULTS}/normalization/{fallback}/{target}/stats.json",
    }


def normalization_summary_inputs(wildcards):
    pairs = read_plan()["pairs"]
    inputs = {
        "metrics": [
            f"{RESULTS}/normalization/metrics/{a}_to_{b}.json" for a, b in pairs
        ]
    }
    if NORMALIZATION["method"] == "cyclegan":
        inputs["decisions"] = [pair_decision(a, b) for a, b in pairs]
    return inputs


def normalization_outputs():
    method = NORMALIZATION["method"]
    outputs = expand(
        f"{RESULTS}/normalized/{method}/{{domain}}/images.npy", domain=DOMAINS
    )
    if method != "none":
        outputs.append(f"{RESULTS}/normalization/metrics.csv")
    return outputs


# ------------------------------------------------------------------------------ synthesis

SYNTHESIS = config["synthesis"]
# synthesis runs per normalization method of its pool (the ablation's "no normalization"
# needs the raw pool); the main run uses the configured method
MAIN_NORM = NORMALIZATION["method"]
SYNTH = f"{RESULTS}/synthesis/{{norm}}"
LABELLED_DOMAINS = sorted(
    {spec["domain"] for spec in config["datasets"].values() if spec["labelled"]}
)
ABLATION_VARIANTS = list(config["ablation"]["variants"])
SYNTHESIS_VARIANTS = ["routed", "no_cwgan", "no_fewshot", "fewshot_all"]


wildcard_constraints:
    synth_class="[A-Za-z0-9_]+",
    norm="none|reinhard|cyclegan",
    generator="cwgan|fewshot",
    synth_variant="|".join(SYNTHESIS_VARIANTS),
    variant="full|no_normalization|no_cwgan|no_fewshot|fewshot_all|no_ge",


def synth_dir(norm):
    return f"{RESULTS}/synthesis/{norm}"


def synthesis_pool_inputs(wildcards):
    inputs = {}
    for domain in LABELLED_DOMAINS:
        base = f"{RESULTS}/normalized/{wildcards.norm}/{domain}"
        inputs[f"images_{domain}"] = f"{base}/images.npy"
        inputs[f"index_{domain}"] = f"{base}/index.parquet"
    return inputs


def routing_params():
    return {
        key: SYNTHESIS[key]
        for key in ("large_min", "fewshot_max", "mid_route", "target")
    }


def generation_gate_params():
    """The quality gate's settings that generation uses (min_real_acceptance only flags
    the judge: changing it must not regenerate images)."""
    return {
        key: value
        for key, value in SYNTHESIS["quality_gate"].items()
        if key != "min_real_acceptance"
    }


def synthesis_options(section):
    """A generator's options as given (preset + overrides), in canonical form."""
    return json.loads(canonical_json(SYNTHESIS[section]))


def read_routes(norm, synth_variant="routed"):
    """The route table of the pool normalized with ``norm``, as the synthesis variant
    changes it (see hemaflow.synth.routing.ablate_routes)."""
    import pandas as pd

    from hemaflow.synth.routing import ablate_routes

    path = checkpoints.synthesis_routes.get(norm=norm).output[0]
    return ablate_routes(pd.read_csv(path, keep_default_na=False), synth_variant)


def generating_classes(norm, synth_variant="routed"):
    """(class, generator) of every class that gets synthetic images."""
    routes = read_routes(norm, synth_variant)
    chosen = routes[(routes["to_generate"] > 0) & (routes["route"] != "none")]
    return list(zip(chosen["canonical_class"], chosen["route"]))


def generator_model_path(norm, generator, name):
    """The model file that generates class ``name``: the C-WGAN-GP or the few-shot GAN
    adapted to it."""
    if generator == "cwgan":
        return f"{synth_dir(norm)}/cwgan/model.pt"
    return f"{synth_dir(norm)}/fewshot/{name}/model.pt"


def generator_model(wildcards):
    return generator_model_path(
        wildcards.norm, wildcards.generator, wildcards.synth_class
    )


def synth_variant_of(wildcards):
    return getattr(wildcards, "synth_variant", "routed")


def synthesis_sample_files(kind):
    def inputs(wildcards):
        return [
            f"{synth_dir(wildcards.norm)}/samples/{generator}/{name}/{kind}"
            for name, generator in generating_classes(
                wildcards.norm, synth_variant_of(wildcards)
            )
        ]

    return inputs


def synthesis_models(wildcards):
    return {
        name: generator_model_path(wildcards.norm, generator, name)
        for name, generator in generating_classes(
            wildcards.norm, synth_variant_of(wildcards)
        )
    }


def quality_curve_names(norm):
    """The quality curves of the routed run: the C-WGAN-GP's (all its classes in one)
    and one per class the few-shot GAN is adapted to."""
    routes = generating_classes(norm)
    names = ["cwgan"] if any(route == "cwgan" for _, route in routes) else []
    return names + [f"fewshot_{name}" for name, route in routes if route == "fewshot"]


def quality_curve_files(kind):
    def inputs(wildcards):
        return [
            f"{synth_dir(wildcards.norm)}/curves/{name}.{kind}"
            for name in quality_curve_names(wildcards.norm)
        ]

    return inputs


def quality_curve_params():
    """The curve's sizes (not whether the default target asks for it: no rerun when
    that changes)."""
    curve = SYNTHESIS["curve"]
    return {key: curve[key] for key in ("images_per_class", "real_per_class")}


def synthesis_outputs():
    if not SYNTHESIS["enabled"]:
        return []
    base = synth_dir(MAIN_NORM)
    outputs = [
        f"{base}/routes.csv",
        f"{base}/gate_classifier/real_acceptance.csv",
        f"{base}/balanced/routed/manifest.parquet",
        f"{base}/balanced/routed/balancing.csv",
        f"{base}/metrics.csv",
    ]
    if SYNTHESIS["curve"]["in_default_target"]:
        outputs.append(f"{base}/curves/curves.csv")
    return outputs


# ----------------------------------------------------------------------------- classifier

# the classifier of each ablation variant; "full" is the main run's
CLASSIFIER_DIR = f"{RESULTS}/classifier/{{variant}}"


def classifier_dir(variant="full"):
    return f"{RESULTS}/classifier/{variant}"


def variant_settings(variant):
    """(normalization method, synthesis variant, classifier change) of an ablation
    variant (hemaflow.classify.ablation.VARIANTS)."""
    from hemaflow.classify.ablation import variant_settings as settings

    return settings(variant, MAIN_NORM)


def classifier_training_inputs(wildcards):
    norm, synth_variant, _ = variant_settings(wildcards.variant)
    base = synth_dir(norm)
    inputs = {
        "pool_images": f"{base}/pool/images.npy",
        "pool_index": f"{base}/pool/index.parquet",
    }
    if SYNTHESIS["enabled"]:
        inputs["balanced_images"] = f"{base}/balanced/{synth_variant}/images.npy"
        inputs["balanced_manifest"] = (
            f"{base}/balanced/{synth_variant}/manifest.parquet"
        )
    return inputs


def classifier_evaluation_inputs(wildcards):
    norm, _, _ = variant_settings(wildcards.variant)
    return {
        "model": f"{classifier_dir(wildcards.variant)}/model.pt",
        "pool_images": f"{synth_dir(norm)}/pool/images.npy",
        "pool_index": f"{synth_dir(norm)}/pool/index.parquet",
    }


def classifier_options():
    return json.loads(canonical_json(config["classifier"]))


def cross_lab_classifier_options():
    """The classifier options of the cross-lab and leave-one-lab-out studies: the
    classifier section with cross_lab.classifier laid over it."""
    return json.loads(
        canonical_json({**config["classifier"], **config["cross_lab"]["classifier"]})
    )


def variant_classifier_options(wildcards):
    from hemaflow.classify.ablation import classifier_options_for

    _, _, change = variant_settings(wildcards.variant)
    return classifier_options_for(classifier_options(), change)


def summary_inputs(wildcards):
    inputs = {
        "data_summary": f"{RESULTS}/data/summary.json",
        "classifier_evaluation": f"{classifier_dir()}/evaluation/summary.json",
    }
    if NORMALIZATION["method"] != "none":
        inputs["normalization_metrics"] = f"{RESULTS}/normalization/metrics.csv"
    if SYNTHESIS["enabled"]:
        base = synth_dir(MAIN_NORM)
        inputs["synthesis_gate"] = f"{base}/balanced/routed/gate.csv"
        inputs["synthesis_balancing"] = f"{base}/balanced/routed/balancing.csv"
        inputs["gate_real_acceptance"] = f"{base}/gate_classifier/real_acceptance.csv"
    return inputs


def headline_settings():
    return {
        "normalization": NORMALIZATION["method"],
        "synthesis": SYNTHESIS["enabled"],
        "classifier": config["classifier"].get("preset"),
        "image_size": config["image_size"],
    }


def classifier_outputs():
    return [
        f"{RESULTS}/summary.json",
        f"{classifier_dir()}/model.pt",
        f"{classifier_dir()}/evaluation/summary.json",
        f"{classifier_dir()}/evaluation/confusion.png",
        f"{classifier_dir()}/training_curve.png",
    ]


def ablation_evaluations(kind):
    return expand(
        f"{RESULTS}/classifier/{{variant}}/evaluation/{kind}", variant=ABLATION_VARIANTS
    )


# ------------------------------------------------------------------------------ cross-lab

CROSS_LAB = config["cross_lab"]


def cross_lab_train_domain(wildcards=None):
    if CROSS_LAB["train_domain"] != "auto":
        return CROSS_LAB["train_domain"]
    return read_plan()["target"]


def cross_lab_inputs(wildcards):
    domain = cross_lab_train_domain()
    inputs = {"model": f"{RESULTS}/cross_lab/{domain}/model.pt"}
    for method in CROSS_LAB["methods"]:
        for test_domain in LABELLED_DOMAINS:
            base = f"{RESULTS}/normalized/{method}/{test_domain}"
            inputs[f"images_{method}_{test_domain}"] = f"{base}/images.npy"
            inputs[f"index_{method}_{test_domain}"] = f"{base}/index.parquet"
    return inputs


wildcard_constraints:
    held_out="|".join(LABELLED_DOMAINS),


def lolo_inputs(wildcards):
    """The normalized caches of every labelled domain: the held-out lab's to test on,
    the others' to train on."""
    inputs = {}
    for domain in LABELLED_DOMAINS:
        base = f"{RESULTS}/normalized/{wildcards.method}/{domain}"
        inputs[f"images_{domain}"] = f"{base}/images.npy"
        inputs[f"index_{domain}"] = f"{base}/index.parquet"
    return inputs


def lolo_results():
    return expand(
        f"{RESULTS}/leave_one_lab_out/{{method}}/{{held_out}}/result.json",
        method=CROSS_LAB["methods"],
        held_out=LABELLED_DOMAINS,
    )


# ------------------------------------------------------------------------ rare-class study

RARE_STUDY = config["rare_study"]
RARE = f"{RESULTS}/rare_study"


wildcard_constraints:
    rare_level="[0-9]+",
    rare_seed="[0-9]+",


def rare_study_cache(wildcards):
    """The raw cache of the study's domain; the domain and classes are checked here, when
    the study is asked for (hemaflow.config.check_rare_study)."""
    from hemaflow.config import check_rare_study

    check_rare_study(config)
    base = f"{RESULTS}/cache/{RARE_STUDY['domain']}"
    return {"images": f"{base}/images.npy", "index": f"{base}/index.parquet"}


def rare_study_uses_fewshot():
    return bool({"fewshot", "both"} & set(RARE_STUDY["arms"]))


def rare_study_run_inputs(wildcards):
    inputs = rare_study_cache(wildcards)
    if rare_study_uses_fewshot():
        inputs["meta"] = f"{RARE}/models/seed{wildcards.rare_seed}/fewshot_meta.pt"
    return inputs


def rare_study_settings(wildcards):
    """hemaflow.synth.rare_study_plan.RareStudySettings of the config, as a plain dict."""
    from hemaflow.synth.rare_study_plan import settings_from_config

    return json.loads(canonical_json(settings_from_config(config).as_dict()))


def rare_study_results():
    return expand(
        f"{RARE}/runs/level{{rare_level}}/seed{{rare_seed}}/results.json",
        rare_level=RARE_STUDY["levels"],
        rare_seed=RARE_STUDY["seeds"],
    )


def rare_study_outputs():
    return [f"{RARE}/{name}" for name in ("summary.csv", "lift.csv", "chart.png")]


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
        *normalization_outputs(),
        *synthesis_outputs(),
        *classifier_outputs(),
        *(rare_study_outputs() if RARE_STUDY["in_default_target"] else []),
    ]
