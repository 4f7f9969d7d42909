# Training and evaluation: every method on every dataset and seed, then one run table.


def train_resources(wildcards):
    """One GPU for training when the configured device is CUDA (the SLURM profile asks for it)."""
    return 1 if config["device"].startswith("cuda") else 0


rule train:
    input:
        data="results/{dataset}/data/index.parquet",
        pools="results/{dataset}/split/seed{seed}/pools.parquet",
        val="results/{dataset}/split/seed{seed}/episodes_val.parquet",
    output:
        checkpoint="results/{dataset}/{method}/seed{seed}/model.pt",
        metrics="results/{dataset}/{method}/seed{seed}/metrics.parquet",
    params:
        dataset=dataset_cfg,
        device=config["device"],
    threads: 1
    resources:
        gpu=train_resources,
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
        checkpoint="results/{dataset}/{method}/seed{seed}/model.pt",
        data="results/{dataset}/data/index.parquet",
        test="results/{dataset}/split/seed{seed}/episodes_test.parquet",
    output:
        json="results/{dataset}/{method}/seed{seed}/evaluation.json",
        table="results/{dataset}/{method}/seed{seed}/evaluation.parquet",
    params:
        device=config["device"],
    threads: 1
    resources:
        gpu=train_resources,
    log:
        "results/{dataset}/{method}/seed{seed}/evaluate.log",
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/evaluate.py"


rule summarize_runs:
    input:
        expand(
            "results/{dataset}/{method}/seed{seed}/evaluation.parquet",
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
    output:
        table="results/runs.parquet",
        markdown="results/runs.md",
    log:
        "results/logs/summarize_runs.log",
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/summarize_runs.py"
