# Data: one prepared artifact per dataset, and one split (pools and fixed episodes) drawn by
# `split.seed` and shared by every training seed, so every run is tested on the same episodes.

SPLIT_POOLS = f"{SPLIT_DIR}/{POOLS_FILE}"
SPLIT_TEST = f"{SPLIT_DIR}/{TEST_EPISODES}"


rule prepare_dataset:
    output:
        images=f"{DATASET_DIR}/data/{IMAGES}",
        index=f"{DATASET_DIR}/data/{INDEX}",
        meta=f"{DATASET_DIR}/data/{META}",
    params:
        dataset=data_params,
        data_root=config["data_root"],
    resources:
        mem_mb=mem_resources("prepare_dataset"),
        # Datasets of one source share a download folder: the profiles allow one
        # preparation at a time so two jobs never download the same archive at once.
        download=1,
    threads: 1
    log:
        f"{DATASET_DIR}/logs/prepare_dataset.log",
    benchmark:
        f"{DATASET_DIR}/logs/prepare_dataset.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule split_dataset:
    input:
        index=rules.prepare_dataset.output.index,
    output:
        pools=SPLIT_POOLS,
        val=f"{SPLIT_DIR}/{VAL_EPISODES}",
        test=SPLIT_TEST,
    params:
        split=split_params,
    threads: 1
    resources:
        mem_mb=mem_resources("split_dataset"),
    log:
        f"{DATASET_DIR}/logs/split_dataset.log",
    benchmark:
        f"{DATASET_DIR}/logs/split_dataset.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/split_dataset.py"
