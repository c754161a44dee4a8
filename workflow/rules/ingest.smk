rule ingest:
    """Decode every file of one dataset once into a manifest and an image cache."""
    input:
        ingest_inputs,
    output:
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
        images=f"{RESULTS}/ingest/{{dataset}}/images.npy",
        quarantine=f"{RESULTS}/ingest/{{dataset}}/quarantine.csv",
    log:
        "logs/ingest/{dataset}.log",
    benchmark:
        "benchmarks/ingest/{dataset}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 8
    params:
        settings=ingest_params,
    script:
        "../scripts/ingest.py"
