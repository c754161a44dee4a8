rule synthesis_pool:
    """Labelled images of every domain after normalization, with splits; subsampling."""
    input:
        unpack(synthesis_pool_inputs),
    output:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    log:
        "logs/synthesis/{norm}/pool.log",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    params:
        domains=LABELLED_DOMAINS,
        subsample=json.loads(canonical_json(SYNTHESIS["subsample"])),
        seed=SYNTHESIS["seed"],
    script:
        "../scripts/synthesis_pool.py"


checkpoint synthesis_routes:
    """Route table: training count, route and images to generate per class."""
    input:
        f"{SYNTH}/pool/index.parquet",
    output:
        report(
            f"{SYNTH}/routes.csv",
            caption="../report/synthesis_routes.rst",
            category="synthesis",
            subcategory="routing",
        ),
    log:
        "logs/synthesis/{norm}/routes.log",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=routing_params(),
    script:
        "../scripts/synthesis_routes.py"


rule train_real_classifier:
    """Classifier on real training images: the C-WGAN-GP's third player and the gate."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    output:
        model=f"{SYNTH}/classifier/model.pt",
        losses=f"{SYNTH}/classifier/losses.csv",
        summary=f"{SYNTH}/classifier/summary.json",
    log:
        "logs/synthesis/{norm}/train_real_classifier.log",
    cache: True
    priority: CHAIN_PRIORITY
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=synthesis_options("classifier"),
        state_root=STATE_DIR,
    script:
        "../scripts/train_real_classifier.py"


rule train_gate_classifier:
    """The quality gate's judge: a classifier on real training images only, independent
    of the C-WGAN-GP's third player."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    output:
        model=f"{SYNTH}/gate_classifier/model.pt",
        losses=f"{SYNTH}/gate_classifier/losses.csv",
        summary=f"{SYNTH}/gate_classifier/summary.json",
    log:
        "logs/synthesis/{norm}/train_gate_classifier.log",
    cache: True
    priority: CHAIN_PRIORITY
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=synthesis_options("gate_classifier"),
        state_root=STATE_DIR,
    script:
        "../scripts/train_gate_classifier.py"


rule gate_real_acceptance:
    """Is the gate fair? Per class, the share of its real validation images that the
    gate's judge accepts; a class below min_real_acceptance is flagged, never given a
    lower threshold."""
    input:
        classifier=f"{SYNTH}/gate_classifier/model.pt",
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    output:
        report(
            f"{SYNTH}/gate_classifier/real_acceptance.csv",
            caption="../report/gate_real_acceptance.rst",
            category="synthesis",
            subcategory="quality gate",
        ),
    log:
        "logs/synthesis/{norm}/gate_real_acceptance.log",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        gate=SYNTHESIS["quality_gate"],
    script:
        "../scripts/gate_real_acceptance.py"


rule train_cwgan:
    """One classifier-guided conditional WGAN-GP over the classes routed to it."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        routes=f"{SYNTH}/routes.csv",
        classifier=f"{SYNTH}/classifier/model.pt",
    output:
        model=f"{SYNTH}/cwgan/model.pt",
        losses=f"{SYNTH}/cwgan/losses.csv",
        summary=f"{SYNTH}/cwgan/summary.json",
    log:
        "logs/synthesis/{norm}/train_cwgan.log",
    cache: True
    priority: CHAIN_PRIORITY
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=synthesis_options("cwgan"),
        state_root=STATE_DIR,
    script:
        "../scripts/train_cwgan.py"


rule train_fewshot_meta:
    """Meta-train the few-shot GAN (Reptile) on tasks from the large classes."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        routes=f"{SYNTH}/routes.csv",
    output:
        model=f"{SYNTH}/fewshot/meta/model.pt",
        losses=f"{SYNTH}/fewshot/meta/losses.csv",
        summary=f"{SYNTH}/fewshot/meta/summary.json",
    log:
        "logs/synthesis/{norm}/train_fewshot_meta.log",
    cache: True
    priority: CHAIN_PRIORITY
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=synthesis_options("fewshot"),
        large_min=SYNTHESIS["large_min"],
        state_root=STATE_DIR,
    script:
        "../scripts/train_fewshot_meta.py"


# fewshot/meta/ is the meta-training's folder, never a class adapted to
ruleorder: train_fewshot_meta > adapt_fewshot


rule adapt_fewshot:
    """Adapt the meta-learned few-shot GAN to one rare class."""
    input:
        meta=f"{SYNTH}/fewshot/meta/model.pt",
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    output:
        model=f"{SYNTH}/fewshot/{{synth_class}}/model.pt",
        losses=f"{SYNTH}/fewshot/{{synth_class}}/losses.csv",
        summary=f"{SYNTH}/fewshot/{{synth_class}}/summary.json",
    log:
        "logs/synthesis/{norm}/adapt_fewshot/{synth_class}.log",
    cache: True
    priority: CHAIN_PRIORITY
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=synthesis_options("fewshot"),
        state_root=STATE_DIR,
    script:
        "../scripts/adapt_fewshot.py"


rule generate_class:
    """Synthetic images of one class through the quality gate."""
    input:
        model=generator_model,
        routes=f"{SYNTH}/routes.csv",
        classifier=f"{SYNTH}/gate_classifier/model.pt",
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
    output:
        images=f"{SYNTH}/samples/{{generator}}/{{synth_class}}/images.npy",
        candidates=f"{SYNTH}/samples/{{generator}}/{{synth_class}}/candidates.parquet",
        summary=f"{SYNTH}/samples/{{generator}}/{{synth_class}}/gate.json",
    log:
        "logs/synthesis/{norm}/generate/{generator}/{synth_class}.log",
    benchmark:
        "benchmarks/synthesis/{norm}/generate/{generator}/{synth_class}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        gate=generation_gate_params(),
        seed=SYNTHESIS["seed"],
        max_candidates_factor=SYNTHESIS["max_candidates_factor"],
    script:
        "../scripts/generate_class.py"


rule validation_metrics:
    """One class's quality targets measured on real VALIDATION images (val and held_out,
    never test): precision, recall, KID and diversity of its accepted synthetic images,
    the gate's acceptance of its candidates."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        samples=f"{SYNTH}/samples/{{generator}}/{{synth_class}}/images.npy",
        candidates=f"{SYNTH}/samples/{{generator}}/{{synth_class}}/candidates.parquet",
    output:
        f"{SYNTH}/samples/{{generator}}/{{synth_class}}/validation_metrics.json",
    log:
        "logs/synthesis/{norm}/validation_metrics/{generator}/{synth_class}.log",
    benchmark:
        "benchmarks/synthesis/{norm}/validation_metrics/{generator}/{synth_class}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        max_images=SYNTHESIS["metrics_max_images"],
        seed=SYNTHESIS["seed"],
    script:
        "../scripts/validation_metrics.py"


rule variant_routes:
    """The route table of a synthesis variant of the ablation (routed: as routed)."""
    input:
        f"{SYNTH}/routes.csv",
    output:
        f"{SYNTH}/routes/{{synth_variant}}.csv",
    log:
        "logs/synthesis/{norm}/routes_{synth_variant}.log",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/variant_routes.py"


rule balanced_training_set:
    """Real training images plus, per generated class, its accepted synthetic images if
    its generator met the route's quality targets, else its real images repeated; with
    provenance and the decision per class."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        routes=f"{SYNTH}/routes/{{synth_variant}}.csv",
        samples=synthesis_sample_files("images.npy"),
        candidates=synthesis_sample_files("candidates.parquet"),
        gates=synthesis_sample_files("gate.json"),
        quality=synthesis_sample_files("validation_metrics.json"),
        judge=f"{SYNTH}/gate_classifier/real_acceptance.csv",
    output:
        images=f"{SYNTH}/balanced/{{synth_variant}}/images.npy",
        manifest=f"{SYNTH}/balanced/{{synth_variant}}/manifest.parquet",
        gate=report(
            f"{SYNTH}/balanced/{{synth_variant}}/gate.csv",
            caption="../report/synthesis_gate.rst",
            category="synthesis",
            subcategory="quality gate",
        ),
        balancing=report(
            f"{SYNTH}/balanced/{{synth_variant}}/balancing.csv",
            caption="../report/synthesis_balancing.rst",
            category="synthesis",
            subcategory="balancing",
        ),
    log:
        "logs/synthesis/{norm}/balanced/{synth_variant}.log",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    params:
        models=synthesis_models,
        targets=SYNTHESIS["quality_targets"],
        require_quality=SYNTHESIS["require_quality"],
        seed=SYNTHESIS["seed"],
        max_synthetic_share=SYNTHESIS["max_synthetic_share"],
    script:
        "../scripts/balanced_training_set.py"


rule synthesis_metrics:
    """Per-class KID/FID, LPIPS diversity, precision/recall and a sample grid."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        routes=f"{SYNTH}/routes.csv",
        samples=synthesis_sample_files("images.npy"),
        candidates=synthesis_sample_files("candidates.parquet"),
    output:
        metrics=report(
            f"{SYNTH}/metrics.csv",
            caption="../report/synthesis_metrics.rst",
            category="synthesis",
            subcategory="metrics",
        ),
        grid=report(
            f"{SYNTH}/grid.png",
            caption="../report/synthesis_grid.rst",
            category="synthesis",
            subcategory="samples",
        ),
    log:
        "logs/synthesis/{norm}/metrics.log",
    benchmark:
        "benchmarks/synthesis/{norm}/metrics.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        max_images=SYNTHESIS["metrics_max_images"],
        fid_min_images=SYNTHESIS["fid_min_images"],
        seed=SYNTHESIS["seed"],
    script:
        "../scripts/synthesis_metrics.py"


rule cwgan_training_curve:
    """The C-WGAN-GP's losses, Wasserstein estimate and class accuracy on its fakes."""
    input:
        f"{SYNTH}/cwgan/losses.csv",
    output:
        report(
            f"{SYNTH}/cwgan/training_curve.png",
            caption="../report/cwgan_curve.rst",
            category="synthesis",
            subcategory="training",
        ),
    log:
        "logs/synthesis/{norm}/cwgan_training_curve.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        title="C-WGAN-GP",
    script:
        "../scripts/training_curve.py"


rule cwgan_quality_curve:
    """KID, precision and the gate judge's acceptance of the C-WGAN-GP's snapshots against
    its training time."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        model=f"{SYNTH}/cwgan/model.pt",
        losses=f"{SYNTH}/cwgan/losses.csv",
        judge=f"{SYNTH}/gate_classifier/model.pt",
        thresholds=f"{SYNTH}/gate_classifier/real_acceptance.csv",
    output:
        table=f"{SYNTH}/curves/cwgan.csv",
        plot=report(
            f"{SYNTH}/curves/cwgan.png",
            caption="../report/quality_curve.rst",
            category="synthesis",
            subcategory="training",
            labels={"curve": "C-WGAN-GP (every class routed to it)"},
        ),
    log:
        "logs/synthesis/{norm}/quality_curve/cwgan.log",
    benchmark:
        "benchmarks/synthesis/{norm}/quality_curve/cwgan.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        generator="cwgan",
        curve=quality_curve_params(),
        seed=SYNTHESIS["seed"],
        min_confidence=SYNTHESIS["quality_gate"]["min_confidence"],
    script:
        "../scripts/quality_curve.py"


rule fewshot_quality_curve:
    """KID and precision of the few-shot GAN's snapshots while it adapts to one class,
    against meta-training plus adaptation time."""
    input:
        images=f"{SYNTH}/pool/images.npy",
        index=f"{SYNTH}/pool/index.parquet",
        model=f"{SYNTH}/fewshot/{{synth_class}}/model.pt",
        losses=f"{SYNTH}/fewshot/{{synth_class}}/losses.csv",
        meta_losses=f"{SYNTH}/fewshot/meta/losses.csv",
        judge=f"{SYNTH}/gate_classifier/model.pt",
        thresholds=f"{SYNTH}/gate_classifier/real_acceptance.csv",
    output:
        table=f"{SYNTH}/curves/fewshot_{{synth_class}}.csv",
        plot=report(
            f"{SYNTH}/curves/fewshot_{{synth_class}}.png",
            caption="../report/quality_curve.rst",
            category="synthesis",
            subcategory="training",
            labels={"curve": "few-shot GAN adapted to {synth_class}"},
        ),
    log:
        "logs/synthesis/{norm}/quality_curve/fewshot_{synth_class}.log",
    benchmark:
        "benchmarks/synthesis/{norm}/quality_curve/fewshot_{synth_class}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        generator="fewshot",
        curve=quality_curve_params(),
        seed=SYNTHESIS["seed"],
        min_confidence=SYNTHESIS["quality_gate"]["min_confidence"],
    script:
        "../scripts/quality_curve.py"


rule quality_curve_table:
    """Every generator's quality curve in one table."""
    input:
        tables=quality_curve_files("csv"),
        plots=quality_curve_files("png"),
    output:
        report(
            f"{SYNTH}/curves/curves.csv",
            caption="../report/quality_curve_table.rst",
            category="synthesis",
            subcategory="training",
            labels={"curve": "every generator (table)"},
        ),
    log:
        "logs/synthesis/{norm}/quality_curve/table.log",
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/quality_curve_table.py"


rule quality_curves:
    """Target: KID and precision against training time of every generator of the main
    run (in the default target with synthesis.curve.in_default_target)."""
    input:
        f"{synth_dir(MAIN_NORM)}/curves/curves.csv",
