# Config validation (schema plus checks on disk) and the helpers every stage uses.
import mamlscope.config as msc

# Validate before any job runs; defaults are filled in place so rules see them.
config.update(msc.validate_config(config))

DATASETS = list(config["datasets"])
SEEDS = [str(s) for s in config["seeds"]]
METHODS = list(config["methods"])


wildcard_constraints:
    dataset="|".join(DATASETS),
    seed=r"\d+",
    method="|".join(METHODS),


def dataset_cfg(wildcards):
    """The resolved config of the dataset a job works on."""
    return config["datasets"][wildcards.dataset]


def all_targets():
    """Everything `rule all` asks for: the run table (which pulls in every run)."""
    return ["results/runs.parquet", "results/runs.md"]
