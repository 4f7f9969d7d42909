# Data: one prepared artifact per dataset, and one split (pools and fixed episodes) drawn by
# `split.seed` and shared by every training seed, so every run is tested on the same episodes.


rule prepare_dataset:
    output:
        images=f"results/{{dataset}}/data/{IMAGES}",
        index=f"results/{{dataset}}/data/{INDEX}",
        meta=f"results/{{dataset}}/data/{META}",
    params:
        dataset=data_params,
        data_root=config["data_root"],
    resources:
        # Datasets of one source share a download folder: the profiles allow one
        # preparation at a time so two jobs never download the same archive at once.
        download=1,
    threads: 1
    log:
        "results/{dataset}/logs/prepare_dataset.log",
    benchmark:
        "results/{dataset}/logs/prepare_dataset.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule split_dataset:
    input:
        index=rules.prepare_dataset.output.index,
    output:
        pools=f"results/{{dataset}}/split/{POOLS_FILE}",
        val=f"results/{{dataset}}/split/{VAL_EPISODES}",
        test=f"results/{{dataset}}/split/{TEST_EPISODES}",
    params:
        split=split_params,
    threads: 1
    log:
        "results/{dataset}/logs/split_dataset.log",
    benchmark:
        "results/{dataset}/logs/split_dataset.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/split_dataset.py"
