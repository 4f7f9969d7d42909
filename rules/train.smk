# Training and evaluation: every method on every dataset and seed, then one run table.

# The patterns that other rules expand (rules/common.smk says why).
METRICS = f"{RUN_DIR}/metrics.parquet"
EVALUATION_JSON = f"{RUN_DIR}/evaluation.json"
EVALUATION_TABLE = f"{RUN_DIR}/evaluation.parquet"


rule train:
    input:
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        pools=rules.split_dataset.output.pools,
        # Read by meta-learning methods only (validation); written with the pools.
        val=rules.split_dataset.output.val,
    output:
        checkpoint=f"{RUN_DIR}/model.pt",
        metrics=METRICS,
        # Weights at `maml.snapshots` evenly spaced steps (standard training: the final).
        snapshots=f"{RUN_DIR}/snapshots.pt",
    params:
        train=train_params,
        device=config["device"],
    threads: 1
    resources:
        mem_mb=mem_resources("train"),
        gpu=gpu_resources,
    log:
        f"{RUN_DIR}/train.log",
    benchmark:
        f"{RUN_DIR}/train.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        checkpoint=rules.train.output.checkpoint,
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        # Plain test accuracy (methods that report it) reads the pools.
        pools=rules.split_dataset.output.pools,
        test=rules.split_dataset.output.test,
    output:
        json=EVALUATION_JSON,
        table=EVALUATION_TABLE,
    params:
        evaluation=evaluate_params,
        device=config["device"],
    threads: 1
    resources:
        mem_mb=mem_resources("evaluate"),
        gpu=gpu_resources,
    log:
        f"{RUN_DIR}/evaluate.log",
    benchmark:
        f"{RUN_DIR}/evaluate.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/evaluate.py"


rule summarize_runs:
    input:
        tables=expand(EVALUATION_TABLE, dataset=DATASETS, method=METHODS, seed=SEEDS),
    output:
        table=f"{OUT}/runs.parquet",
        markdown=report(
            f"{OUT}/runs.md", caption="../report/captions/runs.rst", category="Runs"
        ),
    threads: 1
    resources:
        mem_mb=mem_resources("summarize_runs"),
    log:
        f"{OUT}/logs/summarize_runs.log",
    benchmark:
        f"{OUT}/logs/summarize_runs.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/summarize_runs.py"
