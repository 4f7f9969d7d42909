# Config validation (schema plus checks on disk), where the experiment's outputs go, and the
# functions the rules ask for their params and resources. Plain Python and no rules here
# (`snakemake --lint` wants them apart).
import os
import posixpath
import sys
from pathlib import Path

import yaml
from snakemake.sourcecache import LocalSourceFile

# This workflow's own folder (the parent of rules/), wherever it is included from: as the
# main Snakefile or as a module of another workflow (`module ...: snakefile: ...`), where
# workflow.basedir is the other workflow's folder. None when the module is read from a
# remote source (a URL): then the package must be installed.
_rules_dir = workflow.current_basedir
WORKFLOW_ROOT = (
    Path(_rules_dir.get_path_or_uri(secret_free=False)).parent
    if isinstance(_rules_dir, LocalSourceFile)
    else None
)

# The package from the workflow's own src/ when there is one, in this process and in every
# job (scripts run in a fresh Python, maybe of a conda env that holds only the
# dependencies): the rules and the code they run then always come from the same tree.
if WORKFLOW_ROOT is not None and (WORKFLOW_ROOT / "src" / "mamlscope").is_dir():
    _src = str(WORKFLOW_ROOT / "src")
    if _src not in sys.path:
        sys.path.insert(0, _src)
    _paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if _src not in _paths:  # (set, not required: no `envvars:` for it)
        os.environ.update(PYTHONPATH=os.pathsep.join(p for p in [_src, *_paths] if p))

import mamlscope.cluster
import mamlscope.config as msc
from mamlscope.data.prepared import IMAGES, INDEX, META
from mamlscope.data.splits import POOLS_FILE, TEST_EPISODES, VAL_EPISODES


def experiment_name():
    """Where the outputs go: `--config experiment=NAME` first; else the last config file's
    `experiment` key, or its stem where it has none (`--configfile config.yaml extra.yaml`:
    extra, so a variant lives beside the default); `default` for the workflow's own
    config.yaml, or the config's key when no file was read (a module given a config dict)."""
    if "experiment" in (workflow.config_settings.config or {}):
        return config["experiment"]
    if workflow.configfiles:
        last = Path(workflow.configfiles[-1])
        if WORKFLOW_ROOT is None or last.resolve() != (WORKFLOW_ROOT / "config.yaml").resolve():
            named = (yaml.safe_load(last.read_text()) or {}) if last.is_file() else {}
            return named.get("experiment", last.stem) if isinstance(named, dict) else last.stem
    return config.get("experiment", "default")


# Validate before any job runs; defaults are filled in place so rules see them.
mamlscope.cluster.hide_empty_shell_commands()  # script rules have no shell command
mamlscope.cluster.parse_flags(config)  # the profile's `config: [cluster_gpu=true]` is text
config["experiment"] = experiment_name()
config.update(msc.validate_config(config))

# Every output of the experiment lands under OUT, so experiments live side by side: a
# dataset's data and split, each run, the run tables, the report, the logs.
OUT = f"results/{config['experiment']}"
# Path patterns that rules expand into lists of files. expand() refuses the flagged files
# that `rules.X.output` holds under a default storage provider
# (`--default-storage-provider fs`), so the rules name their outputs with these patterns
# and expand the patterns.
DATASET_DIR = f"{OUT}/{{dataset}}"
RUN_DIR = f"{DATASET_DIR}/{{method}}/seed{{seed}}"
SPLIT_DIR = f"{DATASET_DIR}/split"
COMPARE_DIR = f"{DATASET_DIR}/compare/seed{{seed}}"

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
    """One GPU for each model job (training, evaluation, extraction, analyses) when the
    configured device is CUDA, or `auto` on a cluster with GPUs (`cluster_gpu`, which
    profiles/slurm sets) or run locally where a GPU is seen, so that `--resources gpu=N`
    shares N GPUs; `cpu` never (mamlscope.cluster.wants_gpu)."""
    return 1 if mamlscope.cluster.wants_gpu(config, workflow) else 0


def mem_resources(rule_name):
    """The rule's `mem_mb` (measured peak plus headroom, mamlscope.cluster.mem_mb), so that
    `--resources mem_mb=N` and a cluster's memory requests fit the jobs. Snakemake takes
    only an int here: where the package has no `mem_mb` (an older install), 2000, the
    largest peak the jobs were seen to reach (1.2-2 GB)."""
    mem_mb = getattr(mamlscope.cluster, "mem_mb", None)
    return int(mem_mb(rule_name, config)) if mem_mb is not None else 2000


def feature_targets():
    """Every feature study: per dataset and seed the side-by-side figures and CKA (which
    pull in every model's activations and figures), and the per-episode table of every
    accuracy-based analysis (rules/analyses.smk)."""
    # `figures: false` on a dataset skips its figure studies (not its activations or CKA).
    drawn = [d for d in DATASETS if config["datasets"][d]["figures"]]
    return [
        *expand(list(COMPARE_FIGURES.values()), dataset=drawn, seed=SEEDS),
        *expand([CKA_TABLE, *CKA_FIGURES.values()], dataset=DATASETS, seed=SEEDS),
        *rules.gather_episodes.output,
    ]


def all_targets():
    """Everything the default target asks for: the run table (which pulls in every run),
    every feature study, and the report, which gathers them all."""
    return [*rules.summarize_runs.output, *feature_targets(), *rules.report.output]


# The report's inputs (rules/report.smk).


def own_file(rel):
    """A file of this workflow's own tree (`rel` from its root: the Snakefile, the report
    template), found beside this workflow's files, not beside the Snakefile Snakemake was
    started with (a module's user's). From a local tree: a path relative to the working
    folder, so that moving the project folder leaves the jobs that read it up to date,
    marked local so that no default storage provider claims it; from a remote module:
    Snakemake's cached copy (workflow.source_path)."""
    if WORKFLOW_ROOT is not None:
        return local(os.path.relpath(WORKFLOW_ROOT / rel))
    return workflow.source_path(f"../{rel}")


def workflow_sources(wildcards):
    """Every file of this workflow's own tree that its Snakefile includes (rules/*.smk):
    what, with the Snakefile, the rule graph is drawn from."""
    root = posixpath.dirname(_rules_dir.get_path_or_uri(secret_free=False))  # path or URL
    own = (f.get_path_or_uri(secret_free=False) for f in workflow.included)
    relative = sorted(p[len(root) + 1 :] for p in own if p.startswith(root + posixpath.sep))
    return [own_file(p) for p in relative if p != "Snakefile"]
