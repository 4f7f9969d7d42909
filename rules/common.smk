# Config validation (schema plus checks on disk) and the functions the rules ask for their
# params and resources. Plain Python and no rules here (`snakemake --lint` wants them apart).
import mamlscope.config as msc
from mamlscope.prepared import IMAGES, INDEX, META
from mamlscope.splits import POOLS_FILE, TEST_EPISODES, VAL_EPISODES

# Validate before any job runs; defaults are filled in place so rules see them.
config.update(msc.validate_config(config))

DATASETS = list(config["datasets"])
SEEDS = [str(s) for s in config["seeds"]]
METHODS = list(config["methods"])


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
    """One GPU for training and evaluation when the configured device is CUDA (the SLURM
    profile asks for it)."""
    return 1 if config["device"].startswith("cuda") else 0


def all_targets():
    """Everything the default target asks for: the run table, which pulls in every run."""
    return rules.summarize_runs.output
