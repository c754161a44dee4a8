rule train_classifier:
    """SENet-GE (or the configured architecture) on the balanced training set; early
    stopping on the real validation images; resumable."""
    input:
        unpack(classifier_training_inputs),
    output:
        model=f"{CLASSIFIER_DIR}/model.pt",
        losses=report(
            f"{CLASSIFIER_DIR}/losses.csv",
            caption="../report/classifier_losses.rst",
            category="classification",
            subcategory="training",
        ),
        summary=f"{CLASSIFIER_DIR}/summary.json",
    log:
        "logs/classifier/{variant}/train.log",
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
        options=variant_classifier_options,
        state_root=STATE_DIR,
    script:
        "../scripts/train_classifier.py"


rule evaluate_classifier:
    """Accuracy, balanced accuracy, macro-F1, per-class sensitivity / specificity /
    precision with bootstrap CIs and the confusion matrix, on real test images only."""
    input:
        unpack(classifier_evaluation_inputs),
    output:
        summary=f"{CLASSIFIER_DIR}/evaluation/summary.json",
        per_class=report(
            f"{CLASSIFIER_DIR}/evaluation/per_class.csv",
            caption="../report/classifier_per_class.rst",
            category="classification",
            subcategory="test metrics",
        ),
        confusion_csv=f"{CLASSIFIER_DIR}/evaluation/confusion.csv",
        confusion_png=report(
            f"{CLASSIFIER_DIR}/evaluation/confusion.png",
            caption="../report/classifier_confusion.rst",
            category="classification",
            subcategory="test metrics",
        ),
        predictions=f"{CLASSIFIER_DIR}/evaluation/predictions.parquet",
    log:
        "logs/classifier/{variant}/evaluate.log",
    benchmark:
        "benchmarks/classifier/{variant}/evaluate.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        n_boot=config["evaluation"]["n_boot"],
        seed=config["evaluation"]["seed"],
        tta=config["evaluation"]["tta"],
    script:
        "../scripts/evaluate_classifier.py"


rule train_domain_classifier:
    """The cross-lab model: trained on one domain's real training images only."""
    input:
        images=f"{RESULTS}/cache/{{domain}}/images.npy",
        index=f"{RESULTS}/cache/{{domain}}/index.parquet",
    output:
        model=f"{RESULTS}/cross_lab/{{domain}}/model.pt",
        losses=f"{RESULTS}/cross_lab/{{domain}}/losses.csv",
        summary=f"{RESULTS}/cross_lab/{{domain}}/summary.json",
    log:
        "logs/cross_lab/train/{domain}.log",
    cache: True
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=cross_lab_classifier_options(),
        state_root=STATE_DIR,
    script:
        "../scripts/train_domain_classifier.py"


rule cross_lab_table:
    """Trained on one lab, tested on every labelled lab's held-out images (shared
    classes), with each normalization."""
    input:
        unpack(cross_lab_inputs),
    output:
        table=report(
            f"{RESULTS}/cross_lab/table.csv",
            caption="../report/cross_lab_table.rst",
            category="classification",
            subcategory="cross-lab",
        ),
        chart=report(
            f"{RESULTS}/cross_lab/balanced_accuracy.png",
            caption="../report/cross_lab_chart.rst",
            category="classification",
            subcategory="cross-lab",
        ),
    log:
        "logs/cross_lab/table.log",
    benchmark:
        "benchmarks/cross_lab/table.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        train_domain=cross_lab_train_domain,
        methods=CROSS_LAB["methods"],
        domains=LABELLED_DOMAINS,
        n_boot=config["evaluation"]["n_boot"],
        seed=config["evaluation"]["seed"],
        tta=CROSS_LAB["tta"],
    script:
        "../scripts/cross_lab_table.py"


rule cross_lab:
    """Target: the cross-lab study (not part of the default run)."""
    input:
        f"{RESULTS}/cross_lab/table.csv",
        f"{RESULTS}/cross_lab/balanced_accuracy.png",


rule ablation_table:
    """One table and one chart: accuracy, balanced accuracy, macro-F1 and per-class
    sensitivity of every ablation variant on real test images."""
    input:
        summaries=ablation_evaluations("summary.json"),
        per_class=ablation_evaluations("per_class.csv"),
    output:
        table=report(
            f"{RESULTS}/ablation/table.csv",
            caption="../report/ablation_table.rst",
            category="classification",
            subcategory="ablation",
        ),
        chart=report(
            f"{RESULTS}/ablation/chart.png",
            caption="../report/ablation_chart.rst",
            category="classification",
            subcategory="ablation",
        ),
    log:
        "logs/ablation/table.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        variants=ABLATION_VARIANTS,
    script:
        "../scripts/ablation_table.py"


rule ablation:
    """Target: the ablation study, each variant a full pipeline (not part of the default
    run)."""
    input:
        f"{RESULTS}/ablation/table.csv",
        f"{RESULTS}/ablation/chart.png",


rule headline_summary:
    """results/summary.json: the headline numbers of the run, for scripts."""
    input:
        unpack(summary_inputs),
    output:
        f"{RESULTS}/summary.json",
    log:
        "logs/summary.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=headline_settings(),
    script:
        "../scripts/headline_summary.py"


rule classifier_training_curve:
    """Loss and validation balanced accuracy of the classifier against the iteration."""
    input:
        f"{CLASSIFIER_DIR}/losses.csv",
    output:
        report(
            f"{CLASSIFIER_DIR}/training_curve.png",
            caption="../report/classifier_curve.rst",
            category="classification",
            subcategory="training",
        ),
    log:
        "logs/classifier/{variant}/training_curve.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        title="classifier",
    script:
        "../scripts/training_curve.py"


rule train_lolo_classifier:
    """Leave-one-lab-out: a classifier on every labelled lab but one, pooled, after one
    stain normalization; tested on ALL kept images of the lab it never saw."""
    input:
        unpack(lolo_inputs),
    output:
        model=f"{RESULTS}/leave_one_lab_out/{{method}}/{{held_out}}/model.pt",
        result=f"{RESULTS}/leave_one_lab_out/{{method}}/{{held_out}}/result.json",
    log:
        "logs/leave_one_lab_out/{method}/{held_out}.log",
    benchmark:
        "benchmarks/leave_one_lab_out/{method}/{held_out}.tsv"
    retries: 2
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
        batch_divisor=retry_batch_divisor,
    params:
        library=LIBRARY_VERSION,
        options=cross_lab_classifier_options(),
        state_root=STATE_DIR,
        domains=LABELLED_DOMAINS,
        n_boot=config["evaluation"]["n_boot"],
        seed=config["evaluation"]["seed"],
        tta=CROSS_LAB["tta"],
        balance_labs=CROSS_LAB["balance_labs"],
    script:
        "../scripts/leave_one_lab_out.py"


rule lolo_table:
    """Every (normalization, held-out lab) result in one table and one chart."""
    input:
        lolo_results(),
    output:
        table=report(
            f"{RESULTS}/leave_one_lab_out/table.csv",
            caption="../report/lolo_table.rst",
            category="classification",
            subcategory="leave-one-lab-out",
        ),
        chart=report(
            f"{RESULTS}/leave_one_lab_out/balanced_accuracy.png",
            caption="../report/lolo_chart.rst",
            category="classification",
            subcategory="leave-one-lab-out",
        ),
    log:
        "logs/leave_one_lab_out/table.log",
    benchmark:
        "benchmarks/leave_one_lab_out/table.tsv"
    conda:
        "../envs/hemaflow.yaml"
    script:
        "../scripts/lolo_table.py"


rule leave_one_lab_out:
    """Target: the leave-one-lab-out study (not part of the default run: one classifier
    per normalization and labelled lab)."""
    input:
        f"{RESULTS}/leave_one_lab_out/table.csv",
        f"{RESULTS}/leave_one_lab_out/balanced_accuracy.png",
