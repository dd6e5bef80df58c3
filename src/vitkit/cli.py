"""The `vitkit` command. Each sub-command parses its flags here and calls the library.

Errors that are the user's to fix (bad paths, bad flags, bad files) print one line and exit 2;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

import torch

from vitkit.model import PRESETS, ViT, flops

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class UserError(Exception):
    """A problem with the input that the user can fix; shown as one line, exit code 2."""


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn
    return register


def emit_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- models ------------------------------------------------------------------------------------
def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the named models with parameters and GMACs",
                       description="List the named models (the paper's Table 1 and small-image "
                                   "presets) with their parameter counts and compute per image.")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


@command("models")
def run_models(args: argparse.Namespace) -> int:
    rows = []
    for name, config in PRESETS.items():
        with torch.device("meta"):  # count parameters without allocating ViT-H
            params = ViT(config).num_parameters()
        rows.append({"name": name, "image_size": config.image_size, "patch_size": config.patch_size,
                     "dim": config.dim, "depth": config.depth, "heads": config.heads,
                     "mlp_dim": config.mlp_dim, "num_classes": config.num_classes,
                     "params": params, "gmacs": flops(config) / 1e9})
    if args.json:
        emit_json(rows)
        return 0
    print(f"{'name':<12} {'image':>5} {'patch':>5} {'dim':>5} {'depth':>5} {'heads':>5} "
          f"{'mlp':>5} {'classes':>7} {'params':>9} {'GMACs':>8}")
    for r in rows:
        print(f"{r['name']:<12} {r['image_size']:>5} {r['patch_size']:>5} {r['dim']:>5} "
              f"{r['depth']:>5} {r['heads']:>5} {r['mlp_dim']:>5} {r['num_classes']:>7} "
              f"{r['params'] / 1e6:>8.2f}M {r['gmacs']:>8.2f}")
    return 0


# -- entry point -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers: build, train, evaluate, explain, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


ADDERS = [add_models]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130
