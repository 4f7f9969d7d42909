"""Accuracy of every MAML run of a results tree under both BatchNorm evaluation modes.

    python benchmarks/batchnorm_modes.py --configfile config.yaml [--results results]

For each trained MAML checkpoint, the fixed test episodes are evaluated with
``eval_batchnorm`` ``transductive`` (queries normalised together, Finn et al.) and
``support`` (each query with the support set's statistics), the other settings as the
config's evaluation. Prints a Markdown table (docs/results.md holds the measured ones).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from mamlscope.checkpoint import load_checkpoint
from mamlscope.config import load_config
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import images_to_tensor
from mamlscope.evaluate import EvalSettings, evaluate_checkpoint_on, summarize
from mamlscope.maml import BATCHNORM_MODES
from mamlscope.methods import method


def modes_table(config: dict, results: Path) -> pd.DataFrame:
    rows = []
    for dataset, ds in config["datasets"].items():
        data = PreparedDataset.load(results / dataset / "data")
        images = images_to_tensor(data.images, "cpu")
        for checkpoint in sorted((results / dataset).glob("*/seed*/model.pt")):
            ckpt = load_checkpoint(checkpoint, "cpu")
            if not method(ckpt.method).is_meta:  # BatchNorm modes are a meta method's
                continue
            split = results / dataset / "split" / checkpoint.parent.name
            episodes = pd.read_parquet(split / "episodes_test.parquet")
            settings = EvalSettings.from_config(ds, ckpt.method)
            row = {"dataset": dataset, "method": ckpt.method, "seed": ckpt.seed}
            for mode in BATCHNORM_MODES:
                batches = settings.batches(images, episodes, data)
                accuracy = summarize(
                    evaluate_checkpoint_on(ckpt, batches, replace(settings, batchnorm=mode))
                )
                row[mode] = f"{100 * accuracy.mean:.2f} +- {100 * accuracy.ci95:.2f}%"
                print(f"{dataset} {ckpt.method} seed {ckpt.seed} {mode}: {accuracy}", flush=True)
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--results", default="results/default")
    args = parser.parse_args()
    table = modes_table(load_config(args.configfile, check_paths=False), Path(args.results))
    print()
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
