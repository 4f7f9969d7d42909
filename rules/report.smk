# The report: the workflow's rule graph, then one notebook executed over the results tree
# (papermill) and converted to HTML with the code hidden (nbconvert), beside the accuracy
# table and training curves that `snakemake --report` shows. docs/report.md says more.
# Its input functions (workflow_sources, feature_targets) are in rules/common.smk.

# The template and nbconvert's theme come from this workflow's own tree, whatever the
# working folder and also when the workflow is a module of another (own_file).
THEME = [f"report/nbconvert/mamlscope/{f}" for f in ("conf.json", "index.html.j2")]


localrules:
    rulegraph,
    report,


rule rulegraph:
    input:
        snakefile=own_file("Snakefile"),
        sources=workflow_sources,
    output:
        dot=f"{OUT}/report/rulegraph.dot",
    threads: 1
    resources:
        mem_mb=mem_resources("rulegraph"),
    log:
        f"{OUT}/logs/rulegraph.log",
    benchmark:
        f"{OUT}/logs/rulegraph.benchmark.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/rulegraph.py"


rule report:
    input:
        template=own_file("report/report.ipynb"),
        theme=[own_file(f) for f in THEME],
        runs=rules.summarize_runs.output.table,
        evaluations=expand(EVALUATION_JSON, dataset=DATASETS, method=METHODS, seed=SEEDS),
        metrics=expand(METRICS, dataset=DATASETS, method=METHODS, seed=SEEDS),
        pools=expand(SPLIT_POOLS, dataset=DATASETS),
        # Every analysis of every run, one row per episode (rule gather_episodes).
        episodes=rules.gather_episodes.output.table,
        # Per-episode CKA before/after adaptation at each training snapshot (same rule).
        training_cka=rules.gather_episodes.output.training_cka,
        rulegraph=rules.rulegraph.output.dot,
        studies=feature_targets(),
    output:
        html=report(
            f"{OUT}/report/report.html",
            caption="../report/captions/report.rst",
            category="Report",
        ),
        notebook=f"{OUT}/report/report.ipynb",
        accuracy=report(
            f"{OUT}/report/accuracy.csv",
            caption="../report/captions/accuracy.rst",
            category="Accuracy",
        ),
        curves=report(
            f"{OUT}/report/curves.png",
            caption="../report/captions/curves.rst",
            category="Training",
        ),
    params:
        # The report shows the experiment's resolved config, so any edit of it reruns the
        # report (and only the report, when no result changes).
        experiment=msc.canonical(config),
    threads: 1
    resources:
        mem_mb=mem_resources("report"),
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/logs/report.benchmark.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report.py"
