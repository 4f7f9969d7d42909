"""`mamlscope` on the command line: evaluate a checkpoint on episodes of your own; write a
document's results block from a results tree (`results-doc`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

from mamlscope import __version__
from mamlscope.errors import ConfigError, MamlscopeError
from mamlscope.io import to_json
from mamlscope.methods.base import LEGACY_DEFAULTS

# The modes of mamlscope.maml.BATCHNORM_MODES, spelled here so `--help` needs no torch import.
BATCHNORM_MODES = ("transductive", "support")

if TYPE_CHECKING:
    import torch

    from mamlscope.methods import Method


def _settings_keys(method: Method) -> tuple[str, ...]:
    """The config keys (dotted) the method's evaluation reads (`EvalSettings.from_config`,
    as `config.evaluate_section`), checked up front so a checkpoint that lacks one is named;
    a key that checkpoints saved before it existed may lack is filled in instead."""
    return tuple(k for k in method.evaluate_keys if k not in LEGACY_DEFAULTS)


class _UsageError(MamlscopeError):
    """A command line argparse rejects; reported as one line like our other errors."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage and exits itself
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _device(name: str) -> torch.device:
    """`resolve_device`, with torch's own errors for a bad name turned into a ConfigError."""
    import torch

    from mamlscope.runtime import resolve_device

    try:
        device = resolve_device(name)
    except MamlscopeError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device: '{name}' is not a device; use auto, cpu or cuda") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: '{name}' is not supported; use auto, cpu or cuda")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device: '{name}' asked for, but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def _evaluate(args: argparse.Namespace) -> int:
    from mamlscope.checkpoint import load_checkpoint
    from mamlscope.data.episode_table import IMAGE_KEYS, episode_batches, read_episode_table
    from mamlscope.evaluate import EvalSettings, evaluate_checkpoint_on, summarize
    from mamlscope.methods import method as lookup_method

    if args.batch < 1:
        raise ConfigError(
            f"--batch: episodes adapted together must be at least 1; got {args.batch}"
        )
    device = _device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device)
    method = lookup_method(ckpt.method)
    ckpt.require(*IMAGE_KEYS, *_settings_keys(method))
    # An inner loop adapts the model's own N-way head, so the episodes must be N-way;
    # fine-tuning fits a fresh head of the episodes' way.
    head = None if method.evaluation == "finetune" else ckpt.spec.num_classes
    table = read_episode_table(args.episodes, head=head)
    way = int(table["label"].max()) + 1
    batches = episode_batches(table, ckpt.config, batch_size=args.batch, device=device)
    # A standalone checkpoint is evaluated as its saved config says, on the table's way.
    settings = replace(EvalSettings.from_config(ckpt.config, ckpt.method), way=way)
    if args.batchnorm is not None and method.batchnorm is None:  # not fixed by the method
        settings = replace(settings, batchnorm=args.batchnorm)
    episode_ids = sorted(int(e) for e in table["episode"].unique())
    per_episode = evaluate_checkpoint_on(ckpt, batches, settings, episode_ids=episode_ids)
    accuracy = summarize(per_episode)
    if args.json:  # strict JSON: a mean over no episode is null, not a bare NaN
        print(
            to_json(
                {"method": ckpt.method, "batchnorm": settings.batchnorm_used, **accuracy.as_dict()}
            )
        )
    else:
        print(f"{ckpt.method}: accuracy {accuracy}, BatchNorm {settings.batchnorm_used}")
    return 0


def _results_doc(args: argparse.Namespace) -> int:
    """Write block NAME of a Markdown file from a results tree; print what it replaced."""
    from mamlscope.config import load_config
    from mamlscope.report.results import load_results
    from mamlscope.report.results_doc import (
        block_diff,
        read_block,
        require_results,
        results_block,
        write_block,
    )

    read_block(args.doc, args.name)  # a document without the markers fails before any work
    config = load_config(args.config, check_paths=False)  # the data need not be here
    require_results(args.results, args.only)
    made_by = f"mamlscope results-doc {args.results} --config {args.config}" + (
        f" --only {args.only}" if args.only else ""
    )
    text = results_block(load_results(args.results, config), made_by, args.only)
    old = write_block(args.doc, args.name, text)
    if old == text.strip("\n"):
        print(f"{args.doc}: block '{args.name}' unchanged")
    else:
        print(block_diff(old, text, args.doc, args.name))
        print(f"{args.doc}: block '{args.name}' written from {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors of ours print one line and exit 2, not a traceback."""
    parser = _Parser(prog="mamlscope", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy (mean and 95%% interval) of a checkpoint on an episode table",
        description="Evaluate a checkpoint on episodes given as a Parquet or CSV table with "
        "columns episode, role (support/query), image (path) and label (0..way-1).",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a model.pt written by training")
    evaluate.add_argument("--episodes", required=True, help="the episode table (.parquet/.csv)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    evaluate.add_argument("--batch", type=int, default=50, help="episodes adapted together")
    evaluate.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        default=None,
        help="meta-learned models only: how queries are normalised. transductive: with the "
        "statistics of the episode's queries together (Finn et al.); support: each query "
        "with the support set's statistics, independent of the other queries. Default: "
        "the checkpoint's maml.eval_batchnorm",
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_evaluate)
    doc = commands.add_parser(
        "results-doc",
        help="write a Markdown file's results block from a results tree",
        description="Replace the text between <!-- results:NAME:begin --> and "
        "<!-- results:NAME:end --> in a Markdown file with the accuracy tables, verdicts and "
        "like-for-like comparisons of a results tree, and the machine that made them.",
    )
    doc.add_argument("results", help="the results tree (the workflow's results/)")
    doc.add_argument("--config", required=True, help="the config the results were made with")
    doc.add_argument("--doc", required=True, help="the Markdown file holding the markers")
    doc.add_argument("--name", required=True, help="the block's name in its markers")
    doc.add_argument(
        "--only",
        choices=("accuracy",),
        default=None,
        help="accuracy: the accuracy tables only (no verdicts or like-for-like tables)",
    )
    doc.set_defaults(func=_results_doc)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except MamlscopeError as exc:
        # One line even when the message quotes a multi-line error of a library.
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"mamlscope: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
