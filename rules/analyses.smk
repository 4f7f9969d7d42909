# Accuracy-based analyses of every trained model on the fixed test episodes (layer freezing,
# inner-steps sweep, nearest centroid, fresh head), each training snapshot's layer freezing,
# and one long per-episode table of them all beside each run's own evaluation:
# results/episodes.parquet. Per-episode CKA before/after adaptation at each snapshot:
# results/training_cka.parquet.


rule analyze:
    input:
        checkpoint=rules.train.output.checkpoint,
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        test=rules.split_dataset.output.test,
        snapshots=rules.train.output.snapshots,
    output:
        table="results/{dataset}/{method}/seed{seed}/analyses.parquet",
        training_cka="results/{dataset}/{method}/seed{seed}/training_cka.parquet",
    params:
        evaluation=evaluate_params,
        analyses=msc.canonical(config["analyses"]),
        # CKA over training takes the episodes the feature studies record.
        adapt_episodes=config["features"]["adapt_episodes"],
        # "classes": the test classes were never seen in training (the table's `classes`).
        protocol=lambda wildcards: dataset_cfg(wildcards)["split"]["protocol"],
        device=config["device"],
    threads: 1
    resources:
        gpu=gpu_resources,
    log:
        "results/{dataset}/{method}/seed{seed}/analyze.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/analyze.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/analyze.py"


rule gather_episodes:
    input:
        analyses=expand(
            rules.analyze.output.table, dataset=DATASETS, method=METHODS, seed=SEEDS
        ),
        evaluations=expand(
            rules.evaluate.output.json, dataset=DATASETS, method=METHODS, seed=SEEDS
        ),
        test_episodes=expand(rules.split_dataset.output.test, dataset=DATASETS),
        training_cka=expand(
            rules.analyze.output.training_cka, dataset=DATASETS, method=METHODS, seed=SEEDS
        ),
    output:
        table="results/episodes.parquet",
        training_cka="results/training_cka.parquet",
    params:
        datasets=DATASETS,
        protocols={name: ds["split"]["protocol"] for name, ds in config["datasets"].items()},
    threads: 1
    log:
        "results/logs/gather_episodes.log",
    benchmark:
        "results/logs/gather_episodes.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/gather_episodes.py"
