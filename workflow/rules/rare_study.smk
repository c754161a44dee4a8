rule rare_study_fewshot_meta:
    """The rare-class study's few-shot GAN of one seed, meta-trained on the large classes
    of its domain (the cut leaves them whole: one model serves every level)."""
    input:
        unpack(rare_study_cache),
    output:
        model=f"{RARE}/models/seed{{rare_seed}}/fewshot_meta.pt",
    log:
        "logs/rare_study/fewshot_meta/seed{rare_seed}.log",
    benchmark:
        "benchmarks/rare_study/fewshot_meta/seed{rare_seed}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        library=LIBRARY_VERSION,
        domain=RARE_STUDY["domain"],
        settings=rare_study_settings,
        state_root=STATE_DIR,
    script:
        "../scripts/rare_study_fewshot_meta.py"


rule rare_study_runs:
    """Every arm of one (level, seed): the baseline classifier (also the gate's judge),
    the generators its arms need, one classifier per arm, tested on the real test split.
    Each arm's result is kept (runs/level*/seed*/ARM.json) and not redone while its
    settings stay the same."""
    input:
        unpack(rare_study_run_inputs),
    output:
        f"{RARE}/runs/level{{rare_level}}/seed{{rare_seed}}/results.json",
    log:
        "logs/rare_study/runs/level{rare_level}/seed{rare_seed}.log",
    benchmark:
        "benchmarks/rare_study/runs/level{rare_level}/seed{rare_seed}.tsv"
    conda:
        "../envs/hemaflow.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        library=LIBRARY_VERSION,
        domain=RARE_STUDY["domain"],
        settings=rare_study_settings,
        state_root=STATE_DIR,
    script:
        "../scripts/rare_study_runs.py"


rule rare_study_report:
    """Arm x level x class over the seeds, the lift over no synthesis against the
    seed-to-seed spread, the chart and the verdict (summary.md)."""
    input:
        rare_study_results(),
    output:
        summary=report(
            f"{RARE}/summary.csv",
            caption="../report/rare_study_summary.rst",
            category="classification",
            subcategory="rare-class study",
        ),
        lift=report(
            f"{RARE}/lift.csv",
            caption="../report/rare_study_lift.rst",
            category="classification",
            subcategory="rare-class study",
        ),
        chart=report(
            f"{RARE}/chart.png",
            caption="../report/rare_study_chart.rst",
            category="classification",
            subcategory="rare-class study",
        ),
        runs=f"{RARE}/runs.csv",
        markdown=f"{RARE}/summary.md",
    log:
        "logs/rare_study/report.log",
    conda:
        "../envs/hemaflow.yaml"
    params:
        settings=rare_study_settings,
    script:
        "../scripts/rare_study_report.py"


rule rare_class_study:
    """Target: the rare-class study (not part of the default run unless
    rare_study.in_default_target)."""
    input:
        rare_study_outputs(),
