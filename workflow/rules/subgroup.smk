rule subgroup:
    """Canonical classes through the class map, dedup decisions, stratified split."""
    input:
        manifests=per_dataset(f"{RESULTS}/ingest/{{dataset}}/manifest.parquet"),
        assignments=f"{RESULTS}/dedup/assignments.parquet",
    output:
        manifest=f"{RESULTS}/data/manifest.parquet",
        counts=report(
            f"{RESULTS}/data/counts.csv",
            caption="../report/counts.rst",
            category="data",
            subcategory="class balance",
        ),
        quarantine=report(
            f"{RESULTS}/data/quarantine.csv",
            caption="../report/quarantine.rst",
            category="data",
            subcategory="quarantine",
        ),
        summary=f"{RESULTS}/data/summary.json",
    log:
        "logs/subgroup.log",
    benchmark:
        "benchmarks/subgroup.tsv"
    # a label missing from the class map fails the same way every time: no retry
    retries: 0
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=subgroup_params(),
    script:
        "../scripts/subgroup.py"


rule plot_counts:
    input:
        f"{RESULTS}/data/counts.csv",
    output:
        report(
            f"{RESULTS}/data/counts.png",
            caption="../report/counts.rst",
            category="data",
            subcategory="class balance",
        ),
    log:
        "logs/plot_counts.log",
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/plot_counts.py"


rule domain_cache:
    """The kept images of one domain as one array, for the training stages."""
    input:
        manifest=f"{RESULTS}/data/manifest.parquet",
        images=per_dataset(f"{RESULTS}/ingest/{{dataset}}/images.npy"),
    output:
        images=f"{RESULTS}/cache/{{domain}}/images.npy",
        index=f"{RESULTS}/cache/{{domain}}/index.parquet",
    log:
        "logs/domain_cache/{domain}.log",
    benchmark:
        "benchmarks/domain_cache/{domain}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    params:
        datasets=DATASETS,
    script:
        "../scripts/domain_cache.py"
