# Feature studies: a probe set per dataset and seed, every layer's activations of every
# trained model, the original project's figures per model and side by side, CKA.

import os

from mamlscope.features.studies import caption_file, study_keys

# The figure studies, one module each (mamlscope.features.studies) or a plug-in's entry
# point: each is drawn per model and side by side with no edit here. A study without its
# own report/captions/features/{key}.rst gets the generic caption.
FEATURE_FIGURES = study_keys()
# Looked for in this workflow's own tree (also as a module); read from a URL, every study
# takes the generic caption.
FEATURE_CAPTIONS = os.path.join(WORKFLOW_ROOT or "", "report", "captions", "features")
# A run's figure of each study, and the side-by-side ones (rule compare_methods).
RUN_FIGURES = {name: f"{RUN_DIR}/figures/{name}.png" for name in FEATURE_FIGURES}
COMPARE_FIGURES = {name: f"{COMPARE_DIR}/{name}.png" for name in FEATURE_FIGURES}
ACTIVATIONS = f"{RUN_DIR}/activations.parquet"
CKA_TABLE = f"{COMPARE_DIR}/cka.parquet"
CKA_FIGURES = {
    "methods": f"{COMPARE_DIR}/cka_methods.png",
    "adaptation": f"{COMPARE_DIR}/cka_adaptation.png",
}


rule choose_probe:
    input:
        index=rules.prepare_dataset.output.index,
        pools=rules.split_dataset.output.pools,
    output:
        probe=f"{SPLIT_DIR}/probe.parquet",
    params:
        images=config["features"]["probe_images"],
        split=split_params,
    threads: 1
    resources:
        mem_mb=mem_resources("choose_probe"),
    log:
        f"{DATASET_DIR}/logs/choose_probe.log",
    benchmark:
        f"{DATASET_DIR}/logs/choose_probe.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/choose_probe.py"


rule extract_activations:
    input:
        checkpoint=rules.train.output.checkpoint,
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        probe=rules.choose_probe.output.probe,
        test=rules.split_dataset.output.test,
    output:
        activations=ACTIVATIONS,
    params:
        evaluation=evaluate_params,
        adapt_episodes=config["features"]["adapt_episodes"],
        device=config["device"],
    threads: 1
    resources:
        mem_mb=mem_resources("extract_activations"),
        gpu=gpu_resources,
    log:
        f"{RUN_DIR}/extract_activations.log",
    benchmark:
        f"{RUN_DIR}/extract_activations.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/extract_activations.py"


rule plot_features:
    input:
        checkpoint=rules.train.output.checkpoint,
        metrics=rules.train.output.metrics,
        images=rules.prepare_dataset.output.images,
        index=rules.prepare_dataset.output.index,
        meta=rules.prepare_dataset.output.meta,
        probe=rules.choose_probe.output.probe,
        activations=rules.extract_activations.output.activations,
    output:
        **RUN_FIGURES,
    params:
        features=msc.canonical(config["features"]),
    threads: 1
    resources:
        mem_mb=mem_resources("plot_features"),
    log:
        f"{RUN_DIR}/plot_features.log",
    benchmark:
        f"{RUN_DIR}/plot_features.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/plot_features.py"


rule compare_methods:
    input:
        expand(list(RUN_FIGURES.values()), method=METHODS, allow_missing=True),
    output:
        **{
            name: report(
                pattern,
                caption=f"../report/captions/features/{caption_file(name, FEATURE_CAPTIONS)}",
                category="Feature studies",
                subcategory="{dataset} seed {seed}",
            )
            for name, pattern in COMPARE_FIGURES.items()
        },
    params:
        methods=METHODS,
    threads: 1
    resources:
        mem_mb=mem_resources("compare_methods"),
    log:
        f"{DATASET_DIR}/logs/compare_methods_seed{{seed}}.log",
    benchmark:
        f"{DATASET_DIR}/logs/compare_methods_seed{{seed}}.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/compare_methods.py"


rule cka:
    input:
        expand(ACTIVATIONS, method=METHODS, allow_missing=True),
    output:
        table=CKA_TABLE,
        methods=report(
            CKA_FIGURES["methods"],
            caption="../report/captions/features/cka_methods.rst",
            category="Layer similarity (CKA)",
            subcategory="{dataset} seed {seed}",
        ),
        adaptation=report(
            CKA_FIGURES["adaptation"],
            caption="../report/captions/features/cka_adaptation.rst",
            category="Layer similarity (CKA)",
            subcategory="{dataset} seed {seed}",
        ),
    params:
        methods=METHODS,
    threads: 1
    resources:
        mem_mb=mem_resources("cka"),
    log:
        f"{DATASET_DIR}/logs/cka_seed{{seed}}.log",
    benchmark:
        f"{DATASET_DIR}/logs/cka_seed{{seed}}.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/cka.py"

