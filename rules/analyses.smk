# Accuracy-based analyses of every trained model on the fixed test episodes (layer freezing,
# inner-steps sweep, nearest centroid, fresh head), each training snapshot's layer freezing,
# and one long per-episode table of them all beside each run's own evaluation:
# results/<experiment>/episodes.parquet. Per-episode CKA before/after adaptation at each
# snapshot: results/<experiment>/training_cka.parquet.

ANALYSES_TABLE = f"{RUN_DIR}/analyses.parquet"
RUN_TRAINING_CKA = f"{RUN_DIR}/training_cka.parquet"


rule analyze:
    input:
        checkpoint=rules.train.output.checkpoint,
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        test=rules.split_dataset.output.test,
        snapshots=rules.train.output.snapshots,
    output:
        table=ANALYSES_TABLE,
        training_cka=RUN_TRAINING_CKA,
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
        mem_mb=mem_resources("analyze"),
        gpu=gpu_resources,
    log:
        f"{RUN_DIR}/analyze.log",
    benchmark:
        f"{RUN_DIR}/analyze.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/analyze.py"


rule gather_episodes:
    input:
        analyses=expand(ANALYSES_TABLE, dataset=DATASETS, method=METHODS, seed=SEEDS),
        evaluations=expand(EVALUATION_JSON, dataset=DATASETS, method=METHODS, seed=SEEDS),
        test_episodes=expand(SPLIT_TEST, dataset=DATASETS),
        training_cka=expand(RUN_TRAINING_CKA, dataset=DATASETS, method=METHODS, seed=SEEDS),
    output:
        table=f"{OUT}/episodes.parquet",
        training_cka=f"{OUT}/training_cka.parquet",
    params:
        datasets=DATASETS,
        protocols={name: ds["split"]["protocol"] for name, ds in config["datasets"].items()},
    threads: 1
    resources:
        mem_mb=mem_resources("gather_episodes"),
    log:
        f"{OUT}/logs/gather_episodes.log",
    benchmark:
        f"{OUT}/logs/gather_episodes.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/gather_episodes.py"
