"""A run's folder and the user-facing files in it: `config.json` + `model.safetensors` (what
`vitkit.load` reads), `metrics.jsonl`, `curves.png` and `train.log`; and the epoch's log line.
(`checkpoint.pt`, everything needed to resume, is checkpoint.py's.)"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vitkit import atomic
from vitkit.model.native import save_weights

if TYPE_CHECKING:
    from vitkit.train.plan import Plan

log = logging.getLogger("vitkit")
TIMING_KEYS = ("seconds", "train_seconds", "elapsed", "img_per_s", "loader_wait_s")  # differ run to run


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def log(self) -> Path:
        return self.root / "train.log"


def default_out(data_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data_name.replace(':', '-').replace('/', '_')}-{stamp}"


def write_weights(paths: RunPaths, weights: dict[str, torch.Tensor], plan: Plan) -> None:
    """The model as `vitkit.load` reads it, with what later commands need to know of the run."""
    meta = {"classes": plan.splits.classes, "normalize": plan.normalization.to_dict(), "data": plan.data,
            "recipe": plan.recipe.to_dict(), **({"init_commit": plan.init_commit} if plan.init_commit else {})}
    save_weights(weights, plan.config, paths.root, meta)


def finite(value: object) -> object:
    """`value` with every NaN or infinite number as None: JSON has no such numbers (a diverged
    run's loss is NaN, and other programs read what vitkit writes)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_metrics(paths: RunPaths, history: list[dict]) -> None:
    atomic.write_text(paths.metrics, "".join(json.dumps(finite(h), allow_nan=False) + "\n" for h in history))


def draw_curves(paths: RunPaths, history: list[dict]) -> None:
    from vitkit.train import plots  # matplotlib: imported when a run first draws

    plots.curves(history, paths.curves)


def write_log(paths: RunPaths, skipped: dict[str, str], result: dict) -> None:
    lines = [f"result: {json.dumps(finite(result), allow_nan=False)}", f"skipped files: {len(skipped)}"]
    lines += [f"  {name}: {reason}" for name, reason in sorted(skipped.items())]
    atomic.write_text(paths.log, "\n".join(lines) + "\n")
    if skipped:
        log.warning("skipped %d unreadable file(s); see %s", len(skipped), paths.log)


def log_epoch(record: dict, epochs: int | None) -> None:
    log.info("epoch %d/%s  train loss %.4f  val loss %.4f  val top-1 %.2f%%  lr %.2e  %.0f img/s  %.1f s",
             record["epoch"], epochs, record["train_loss"], record["val_loss"], 100 * record["val_top1"],
             record["lr"], record["img_per_s"], record["seconds"])
    busy = max(record["train_seconds"] - record["loader_wait_s"], 1e-9)
    log.debug("  model %.0f img/s while computing; waited %.2f s of %.1f s for data",
              record["img_per_s"] * record["train_seconds"] / busy, record["loader_wait_s"], record["train_seconds"])
