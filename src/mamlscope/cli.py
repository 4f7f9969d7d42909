"""`mamlscope` on the command line: evaluate a checkpoint on episodes of your own."""

from __future__ import annotations

import argparse
import json
import sys

from mamlscope.errors import MamlscopeError


def _evaluate(args: argparse.Namespace) -> int:
    from mamlscope.checkpoint import load_checkpoint
    from mamlscope.episode_table import episode_batches, read_episode_table
    from mamlscope.evaluate import evaluate_checkpoint_on, summarize
    from mamlscope.train import resolve_device

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device)
    table = read_episode_table(args.episodes)
    way = int(table["label"].max()) + 1
    if ckpt.method != "baseline" and way != ckpt.spec.num_classes:
        raise MamlscopeError(
            f"{args.episodes}: {way}-way episodes, but the checkpoint's head has "
            f"{ckpt.spec.num_classes} outputs ({ckpt.method} adapts an N-way head of its own size)"
        )
    batches = episode_batches(table, ckpt.config, batch_size=args.batch, device=device)
    accuracy = summarize(evaluate_checkpoint_on(ckpt, batches, way=way))
    if args.json:
        print(json.dumps({"method": ckpt.method, **accuracy.as_dict()}))
    else:
        print(f"{ckpt.method}: accuracy {accuracy}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors of ours print one line and exit 2, not a traceback."""
    parser = argparse.ArgumentParser(prog="mamlscope", description=__doc__)
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
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_evaluate)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MamlscopeError as exc:
        print(f"mamlscope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
