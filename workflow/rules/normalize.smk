checkpoint normalization_plan:
    """Which domain is mapped onto which (depends on the kept counts)."""
    input:
        f"{RESULTS}/data/counts.csv",
    output:
        f"{RESULTS}/normalization/plan.json",
    log:
        "logs/normalization/plan.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=normalization_params(),
    script:
        "../scripts/normalization_plan.py"


rule train_cyclegan:
    """W-CycleGAN-GP of one domain pair, on the train split; resumable."""
    input:
        source_images=f"{RESULTS}/cache/{{source}}/images.npy",
        source_index=f"{RESULTS}/cache/{{source}}/index.parquet",
        target_images=f"{RESULTS}/cache/{{target}}/images.npy",
        target_index=f"{RESULTS}/cache/{{target}}/index.parquet",
    output:
        model=f"{RESULTS}/normalization/cyclegan/{{source}}_to_{{target}}/model.pt",
        losses=f"{RESULTS}/normalization/cyclegan/{{source}}_to_{{target}}/losses.csv",
        summary=f"{RESULTS}/normalization/cyclegan/{{source}}_to_{{target}}/summary.json",
    log:
        "logs/normalization/train_cyclegan/{source}_to_{target}.log",
    cache: True
    priority: labelled_first
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=cyclegan_params(),
        state_root=STATE_DIR,
    script:
        "../scripts/train_cyclegan.py"


rule fit_classical:
    """A classical normalization's statistics of a target domain (train split):
    Reinhard's LAB mean and standard deviation, Macenko's stain vectors."""
    input:
        images=f"{RESULTS}/cache/{{domain}}/images.npy",
        index=f"{RESULTS}/cache/{{domain}}/index.parquet",
    output:
        f"{RESULTS}/normalization/{{classical}}/{{domain}}/stats.json",
    log:
        "logs/normalization/fit_{classical}/{domain}.log",
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/fit_classical.py"


rule normalization_decision:
    """Per pair: the CycleGAN, or the fallback when it maps the source lab's VALIDATION
    images further from the target's (KID) than the fallback does; the fallback for an
    unlabelled source lab without a CycleGAN (normalization.unlabelled)."""
    input:
        unpack(normalization_decision_inputs),
    output:
        f"{RESULTS}/normalization/decisions/{{source}}_to_{{target}}.json",
    log:
        "logs/normalization/decisions/{source}_to_{target}.log",
    benchmark:
        "benchmarks/normalization/decisions/{source}_to_{target}.tsv"
    priority: labelled_first
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=decision_gpu,
    params:
        fallback=NORMALIZATION["fallback"],
        max_images=NORMALIZATION["metrics_max_images"],
        cyclegan=lambda wildcards: has_cyclegan(wildcards.source, wildcards.target),
    script:
        "../scripts/normalization_decision.py"


rule normalize_domain:
    """A normalized copy of one domain's image cache; the original stays untouched."""
    input:
        unpack(normalize_domain_inputs),
    output:
        images=f"{RESULTS}/normalized/{{method}}/{{domain}}/images.npy",
        index=f"{RESULTS}/normalized/{{method}}/{{domain}}/index.parquet",
    log:
        "logs/normalization/normalize/{method}/{domain}.log",
    benchmark:
        "benchmarks/normalization/normalize/{method}/{domain}.tsv"
    priority: labelled_first
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=normalize_domain_gpu,
    params:
        models=normalize_domain_models,
        stats=normalize_domain_stats,
        decisions=normalize_domain_decisions,
    script:
        "../scripts/normalize_domain.py"


rule normalization_metrics:
    """FID/KID before and after normalization, cycle SSIM, and the image grid."""
    input:
        unpack(normalization_metrics_inputs),
    output:
        metrics=f"{RESULTS}/normalization/metrics/{{source}}_to_{{target}}.json",
        grid=report(
            f"{RESULTS}/normalization/grids/{{source}}_to_{{target}}.png",
            caption="../report/normalization_grid.rst",
            category="normalization",
            subcategory="{source} to {target}",
            labels={"pair": "{source} to {target}", "figure": "examples"},
        ),
    log:
        "logs/normalization/metrics/{source}_to_{target}.log",
    benchmark:
        "benchmarks/normalization/metrics/{source}_to_{target}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        max_images=config["normalization"]["metrics_max_images"],
    script:
        "../scripts/normalization_metrics.py"


rule normalization_summary:
    input:
        unpack(normalization_summary_inputs),
    output:
        report(
            f"{RESULTS}/normalization/metrics.csv",
            caption="../report/normalization_metrics.rst",
            category="normalization",
            subcategory="metrics",
        ),
    log:
        "logs/normalization/summary.log",
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/normalization_summary.py"
