# Training and evaluation: every method on every dataset and seed, then one run table.


rule train:
    input:
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        pools=rules.split_dataset.output.pools,
        # Read by meta-learning methods only (validation); written with the pools.
        val=rules.split_dataset.output.val,
    output:
        checkpoint="results/{dataset}/{method}/seed{seed}/model.pt",
        metrics="results/{dataset}/{method}/seed{seed}/metrics.parquet",
        # Weights at `maml.snapshots` evenly spaced steps (standard training: the final).
        snapshots="results/{dataset}/{method}/seed{seed}/snapshots.pt",
    params:
        train=train_params,
        device=config["device"],
    threads: 1
    resources:
        gpu=gpu_resources,
    log:
        "results/{dataset}/{method}/seed{seed}/train.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/train.benchmark.tsv"
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
        json="results/{dataset}/{method}/seed{seed}/evaluation.json",
        table="results/{dataset}/{method}/seed{seed}/evaluation.parquet",
    params:
        evaluation=evaluate_params,
        device=config["device"],
    threads: 1
    resources:
        gpu=gpu_resources,
    log:
        "results/{dataset}/{method}/seed{seed}/evaluate.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/evaluate.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/evaluate.py"


rule summarize_runs:
    input:
        tables=expand(
            rules.evaluate.output.table,
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
    output:
        table="results/runs.parquet",
        markdown=report(
            "results/runs.md", caption="../report/captions/runs.rst", category="Runs"
        ),
    threads: 1
    log:
        "results/logs/summarize_runs.log",
    benchmark:
        "results/logs/summarize_runs.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/summarize_runs.py"
