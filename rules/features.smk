# Feature studies: a probe set per dataset and seed, every layer's activations of every
# trained model, the seed's figures per model and side by side, CKA.

import os

from mamlscope.features.studies import caption_file, study_keys

# The figure studies, one module each (mamlscope.features.studies) or a plug-in's entry
# point: each is drawn per model and side by side with no edit here. A study without its
# own report/captions/features/{key}.rst gets the generic caption.
FEATURE_FIGURES = study_keys()
FEATURE_CAPTIONS = os.path.join(workflow.basedir, "report", "captions", "features")


rule choose_probe:
    input:
        index=rules.prepare_dataset.output.index,
        pools=rules.split_dataset.output.pools,
    output:
        probe="results/{dataset}/split/probe.parquet",
    params:
        images=config["features"]["probe_images"],
        split=split_params,
    threads: 1
    log:
        "results/{dataset}/logs/choose_probe.log",
    benchmark:
        "results/{dataset}/logs/choose_probe.benchmark.tsv"
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
        activations="results/{dataset}/{method}/seed{seed}/activations.parquet",
    params:
        evaluation=evaluate_params,
        adapt_episodes=config["features"]["adapt_episodes"],
        device=config["device"],
    threads: 1
    resources:
        gpu=gpu_resources,
    log:
        "results/{dataset}/{method}/seed{seed}/extract_activations.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/extract_activations.benchmark.tsv"
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
        **{
            name: f"results/{{dataset}}/{{method}}/seed{{seed}}/figures/{name}.png"
            for name in FEATURE_FIGURES
        },
    params:
        features=msc.canonical(config["features"]),
    threads: 1
    log:
        "results/{dataset}/{method}/seed{seed}/plot_features.log",
    benchmark:
        "results/{dataset}/{method}/seed{seed}/plot_features.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/plot_features.py"


rule compare_methods:
    input:
        expand(
            "results/{{dataset}}/{method}/seed{{seed}}/figures/{name}.png",
            method=METHODS,
            name=FEATURE_FIGURES,
        ),
    output:
        **{
            name: report(
                f"results/{{dataset}}/compare/seed{{seed}}/{name}.png",
                caption=f"../report/captions/features/{caption_file(name, FEATURE_CAPTIONS)}",
                category="Feature studies",
                subcategory="{dataset} seed {seed}",
            )
            for name in FEATURE_FIGURES
        },
    params:
        methods=METHODS,
    threads: 1
    log:
        "results/{dataset}/logs/compare_methods_seed{seed}.log",
    benchmark:
        "results/{dataset}/logs/compare_methods_seed{seed}.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/compare_methods.py"


rule cka:
    input:
        expand(
            "results/{{dataset}}/{method}/seed{{seed}}/activations.parquet",
            method=METHODS,
        ),
    output:
        table="results/{dataset}/compare/seed{seed}/cka.parquet",
        methods=report(
            "results/{dataset}/compare/seed{seed}/cka_methods.png",
            caption="../report/captions/features/cka_methods.rst",
            category="Layer similarity (CKA)",
            subcategory="{dataset} seed {seed}",
        ),
        adaptation=report(
            "results/{dataset}/compare/seed{seed}/cka_adaptation.png",
            caption="../report/captions/features/cka_adaptation.rst",
            category="Layer similarity (CKA)",
            subcategory="{dataset} seed {seed}",
        ),
    params:
        methods=METHODS,
    threads: 1
    log:
        "results/{dataset}/logs/cka_seed{seed}.log",
    benchmark:
        "results/{dataset}/logs/cka_seed{seed}.benchmark.tsv"
    conda:
        "../envs/mamlscope.yaml"
    script:
        "../scripts/cka.py"

