# mamlscope: what does MAML learn, compared with standard training?
# A table of contents: the config, its validation, then one file of rules per stage.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default experiment; `--configfile other.yaml` replaces it whole
# (Snakemake would otherwise merge the two and run both experiments' datasets). Each
# experiment writes under results/<its `experiment` key>/ (rules/common.smk), so they live
# side by side.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# `snakemake --report results/default/report.zip`: Snakemake's own report (rules mark their
# outputs with report()); the notebook report is results/<experiment>/report/report.html.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/features.smk"
include: "rules/analyses.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
