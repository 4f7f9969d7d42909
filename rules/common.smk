# Config validation (schema plus checks on disk) and the functions the rules ask for their
# params and resources. Plain Python and no rules here (`snakemake --lint` wants them apart).
import os

import mamlscope.cluster
import mamlscope.config as msc
from mamlscope.data.prepared import IMAGES, INDEX, META
from mamlscope.data.splits import POOLS_FILE, TEST_EPISODES, VAL_EPISODES

# Validate before any job runs; defaults are filled in place so rules see them.
mamlscope.cluster.parse_flags(config)  # the profile's `config: [cluster_gpu=true]` is text
config.update(msc.validate_config(config))

DATASETS = list(config["datasets"])
SEEDS = [str(s) for s in config["seeds"]]
METHODS = list(config["methods"])

# Short jobs that `cluster_localrules: true` (profiles/slurm) runs inside Snakemake on the
# login node instead of submitting them. Add a short rule by its name here.
LOCAL_RULES = [
    "prepare_dataset",
    "split_dataset",
    "summarize_runs",
    "choose_probe",
    "plot_features",
    "compare_methods",
    "gather_episodes",
]
if config["cluster_localrules"]:
    workflow.localrules(*LOCAL_RULES)


# On SLURM (a real run, in the submitting process only): a status command that fails stops
# the run instead of a silent endless wait, and long waits print a line (mamlscope.cluster).
onstart:
    mamlscope.cluster.on_start(workflow, config)


wildcard_constraints:
    dataset="|".join(DATASETS),
    seed=r"\d+",
    method="|".join(METHODS),


# Each job's params are the config keys that job reads (mamlscope.config.*_section):
# Snakemake reruns a job when its params change, so an edit reruns only what it concerns.


def dataset_cfg(wildcards):
    """The resolved config of the dataset a job works on."""
    return config["datasets"][wildcards.dataset]


def data_params(wildcards):
    """What decides the prepared data: the source, image size, normalisation..."""
    return msc.data_section(dataset_cfg(wildcards))


def split_params(wildcards):
    """What decides a seed's pools and fixed episodes: `split` and `episodes`."""
    return msc.split_section(dataset_cfg(wildcards))


def train_params(wildcards):
    """What decides a training run: the model and the method's training keys."""
    return msc.train_section(dataset_cfg(wildcards), wildcards.method)


def evaluate_params(wildcards):
    """What decides a run's evaluation: the episode shape and the method's test keys."""
    return msc.evaluate_section(dataset_cfg(wildcards), wildcards.method)


def gpu_resources(wildcards):
    """One GPU for training and evaluation when the configured device is CUDA, or `auto`
    on a cluster with GPUs (`cluster_gpu`, which profiles/slurm sets); `cpu` never."""
    return 1 if mamlscope.cluster.wants_gpu(config) else 0


def feature_targets():
    """Every feature study: per dataset and seed the side-by-side figures and CKA (which
    pull in every model's activations and figures), and the per-episode table of every
    accuracy-based analysis (rules/analyses.smk)."""
    # `figures: false` on a dataset skips its figure studies (not its activations or CKA).
    drawn = [d for d in DATASETS if config["datasets"][d]["figures"]]
    return [
        *expand(rules.compare_methods.output, dataset=drawn, seed=SEEDS),
        *expand(rules.cka.output, dataset=DATASETS, seed=SEEDS),
        *rules.gather_episodes.output,
    ]


def all_targets():
    """Everything the default target asks for: the run table (which pulls in every run),
    every feature study, and the report, which gathers them all."""
    return [*rules.summarize_runs.output, *feature_targets(), *rules.report.output]


# The report's inputs (rules/report.smk).


def workflow_sources(wildcards):
    """Every file the Snakefile includes: what, with it, the rule graph is drawn from."""
    paths = (os.path.relpath(f.get_path_or_uri(secret_free=False)) for f in workflow.included)
    return sorted(p for p in paths if p != os.path.relpath(workflow.main_snakefile))
