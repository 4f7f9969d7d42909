# The report: the workflow's rule graph, then one notebook executed over the results tree
# (papermill) and converted to HTML with the code hidden (nbconvert), beside the accuracy
# table and training curves that `snakemake --report` shows. docs/report.md says more.
# Its input functions (workflow_sources, feature_targets) are in rules/common.smk.
import os

# The template and nbconvert's theme live beside the Snakefile, whatever the working folder.
REPORT_DIR = os.path.relpath(os.path.join(workflow.basedir, "report"))


localrules:
    rulegraph,
    report,


rule rulegraph:
    input:
        snakefile=os.path.relpath(workflow.main_snakefile),
        sources=workflow_sources,
    output:
        dot="results/report/rulegraph.dot",
    threads: 1
    log:
        "results/logs/rulegraph.log",
    benchmark:
        "results/logs/rulegraph.benchmark.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/rulegraph.py"


rule report:
    input:
        template=f"{REPORT_DIR}/report.ipynb",
        theme=[f"{REPORT_DIR}/nbconvert/mamlscope/{f}" for f in ("conf.json", "index.html.j2")],
        runs=rules.summarize_runs.output.table,
        evaluations=expand(
            rules.evaluate.output.json, dataset=DATASETS, method=METHODS, seed=SEEDS
        ),
        metrics=expand(rules.train.output.metrics, dataset=DATASETS, method=METHODS, seed=SEEDS),
        pools=expand(rules.split_dataset.output.pools, dataset=DATASETS),
        # Every analysis of every run, one row per episode (rule gather_episodes).
        episodes="results/episodes.parquet",
        # Per-episode CKA before/after adaptation at each training snapshot (same rule).
        training_cka="results/training_cka.parquet",
        rulegraph=rules.rulegraph.output.dot,
        studies=feature_targets(),
    output:
        html=report(
            "results/report/report.html",
            caption="../report/captions/report.rst",
            category="Report",
        ),
        notebook="results/report/report.ipynb",
        accuracy=report(
            "results/report/accuracy.csv",
            caption="../report/captions/accuracy.rst",
            category="Accuracy",
        ),
        curves=report(
            "results/report/curves.png",
            caption="../report/captions/curves.rst",
            category="Training",
        ),
    params:
        # The report shows the experiment's resolved config, so any edit of it reruns the
        # report (and only the report, when no result changes).
        experiment=msc.canonical(config),
    threads: 1
    log:
        "results/logs/report.log",
    benchmark:
        "results/logs/report.benchmark.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report.py"
