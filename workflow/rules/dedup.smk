rule dedup:
    """Exact and near duplicates within and across datasets; label conflicts."""
    input:
        manifests=per_dataset(f"{RESULTS}/ingest/{{dataset}}/manifest.parquet"),
        images=per_dataset(f"{RESULTS}/ingest/{{dataset}}/images.npy"),
    output:
        assignments=f"{RESULTS}/dedup/assignments.parquet",
        groups=report(
            f"{RESULTS}/dedup/groups.csv",
            caption="../report/dedup_groups.rst",
            category="data",
            subcategory="deduplication",
        ),
        pairs=f"{RESULTS}/dedup/near_pairs.csv",
        summary=f"{RESULTS}/dedup/summary.json",
    log:
        "logs/dedup.log",
    benchmark:
        "benchmarks/dedup.tsv"
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=dedup_params(),
        datasets=DATASETS,
    script:
        "../scripts/dedup.py"
