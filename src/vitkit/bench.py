"""`vitkit bench`: images/s of vitkit and its peers on the same model, measured the same way in
one process, against the machine's own matrix-multiply peak measured in the same run.

Like for like: every library builds the same architecture (the same weights where its format
allows, and the bench checks that those compute the same logits), runs in the same execution
(eager, and with --compile also torch.compile, with freezing for inference) and handles bf16 the
same way (weights cast to bf16 once, or fp32 weights under autocast: one choice for all), with
the same allocator (freed memory kept for reuse, `vitkit.runtime`, which is process-wide).
Libraries take turns within each round, in a rotating order, with the matmul peak measured in
every round; rounds repeat until the spread of every row is known, and a difference counts as a
win only when the two rows' ranges do not overlap. A machine whose speed drifts between rounds
widens every range alike, so each comparison also pairs the rows round by round (their ratio in
each round, and how many rounds vitkit won), and each row's share of the peak is also taken
against the peak of its own round. A row's share counts the work its library does: a class-token
vitkit model skips most of its last block's work (`ViTConfig.head_tokens`), the peers do not.
"""

from __future__ import annotations

import copy
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from vitkit import runtime
from vitkit.extras import require
from vitkit.model.fast import DTYPES, for_inference, use_training_kernels
from vitkit.model.flops import flops
from vitkit.model.presets import get_config
from vitkit.model.vit import ViT

PEERS = ("timm", "hf", "torchvision", "vit-pytorch")
SAME_WEIGHTS = ("vitkit", "timm", "hf")  # formats vitkit's weights load into; the others get their own
BF16_WAYS = ("weights", "autocast")


@dataclass
class Spread:
    """Smallest, median and largest of repeated measurements."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 2) -> tuple[float, str]:
    """FLOP/s of a large square matmul in `dtype` (the best of `repeats`): what this machine can
    do at best; and the dtype the product was computed in, as measured. A GPU gets 8192^3 products,
    ten per timing: a 2048^3 one takes ~20 us on an H100, about the time of launching it."""
    size, products = (8192, 10) if device.type == "cuda" else (2048, 1)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    product, best = a @ b, math.inf  # warm-up: kernel choice, clocks
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(products):
            product = a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / products)
    return 2 * size**3 / best, str(product.dtype).removeprefix("torch.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peer(name: str, model: ViT) -> torch.nn.Module:
    """The peer library's own model of the same architecture (with vitkit's weights where the
    format allows: timm and Hugging Face)."""
    c = model.config
    if name == "timm":
        from vitkit.weights import timm as timm_format

        timm_vit = require("timm.models.vision_transformer", "peers", "--compare timm")
        state, kwargs = timm_format.from_vitkit(model)
        peer = timm_vit.VisionTransformer(**kwargs)
        peer.load_state_dict(state)
        return peer
    if name == "hf":
        transformers = require("transformers", "peers", "--compare hf")
        from vitkit.weights.io import save

        # through from_pretrained, which renames keys across transformers versions; a
        # non-strict load_state_dict would leave the encoder at random weights
        with tempfile.TemporaryDirectory() as tmp:
            save(model, tmp, format="hf")
            return _Logits(transformers.ViTForImageClassification.from_pretrained(tmp))
    if name == "torchvision":
        import torchvision

        return torchvision.models.VisionTransformer(c.image_hw[0], c.patch_hw[0], c.depth, c.heads, c.dim,
                                                    c.mlp_dim, num_classes=c.num_classes)
    if name == "vit-pytorch":
        vit_pytorch = require("vit_pytorch", "peers", "--compare vit-pytorch")
        return vit_pytorch.ViT(image_size=c.image_size, patch_size=c.patch_size, num_classes=c.num_classes,
                               dim=c.dim, depth=c.depth, heads=c.heads, mlp_dim=c.mlp_dim,
                               channels=c.in_channels, dim_head=c.dim // c.heads)
    raise ValueError(f"--compare {name!r}: peers are {', '.join(PEERS)}")


class _Logits(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=x).logits


def inference_function(model: torch.nn.Module, dtype: str, bf16: str = "weights",
                       compiled: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """How every library, vitkit included, runs inference here: a copy in eval mode, compiled with
    freezing if asked (`for_inference`); bf16 either as weights cast once (inputs cast to match)
    or as fp32 weights under autocast."""
    if dtype == "bf16" and bf16 == "autocast":
        prepared = for_inference(model, "fp32", compiled)

        def run(x: torch.Tensor) -> torch.Tensor:
            with runtime.autocast(x.device, True):
                return prepared(x)
        return run
    prepared = for_inference(model, dtype, compiled)
    return lambda x: prepared(x.to(DTYPES[dtype]))


@dataclass
class Runner:
    """One row of the benchmark: `step` is the timed unit of work, `output` its logits (for the
    check that the rows compute the same function)."""

    step: Callable[[], None]
    output: Callable[[], torch.Tensor]


def runner(model: torch.nn.Module, mode: str, dtype: str, batch: torch.Tensor, own: bool, compiled: bool = False,
           bf16: str = "weights") -> Runner:
    """Inference: `inference_function`, the same for every library. Training: a copy with AdamW
    and fp32 master weights, bf16 through autocast, torch.compile if asked; vitkit also trains with
    its CPU kernels (`use_training_kernels`), as its trainer does."""
    if mode == "infer":
        forward = inference_function(model, dtype, bf16, compiled)
        x = batch.to(DTYPES[dtype]) if bf16 == "weights" else batch

        def infer() -> None:
            with torch.inference_mode():
                forward(x)

        def infer_output() -> torch.Tensor:
            with torch.inference_mode():
                return forward(x).float()
        return Runner(infer, infer_output)
    model = copy.deepcopy(model).train()
    if own:
        use_training_kernels(model, batch.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 10, (len(batch),), device=batch.device)
    forward = torch.compile(model) if compiled else model
    autocast = runtime.autocast(batch.device, dtype == "bf16")

    def train() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(forward(batch).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_output() -> torch.Tensor:  # eager: the compiled graph is the training one
        with torch.no_grad(), autocast:
            return model(batch).float()
    return Runner(train, train_output)


def tolerance(dtype: str, depth: int) -> float:
    """Largest logit error, relative to the largest logit, of a row that computes the reference
    function: fp32 reorderings, or bf16 rounding (3 * sqrt(2 * depth + 3) * 2^-8; derived in
    tests/model/test_fast.py)."""
    return 1e-4 if dtype == "fp32" else 3 * math.sqrt(2 * depth + 3) * 2.0**-8


def time_step(step: Callable[[], None], iters: int, device: torch.device) -> float:
    """Seconds per call of `step`, the mean of `iters` calls, the device synchronised around them."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


Timer = Callable[[Callable[[], None], int, torch.device], float]  # (step, iters, device) -> seconds per step
Peak = Callable[[torch.dtype, torch.device], tuple[float, str]]  # (dtype, device) -> FLOP/s, dtype seen


def measure(steps: dict[str, Callable[[], None]], repeats: int, iters: int, peak_dtype: torch.dtype,
            device: torch.device, timer: Timer = time_step,
            peak: Peak = matmul_peak) -> tuple[dict[str, list[float]], list[float], str]:
    """Seconds per step of every row (`timer`), and matmul peaks (`peak`), over rounds. In each
    round every row runs once (the order rotating, so no row always follows the same one) and the
    peak is measured once. At least `repeats` rounds, then more (up to 3x) until a round gives no
    row a new fastest or slowest time: the spread has stopped growing."""
    for step in steps.values():  # warm-up: compilation, allocator, kernel plans
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    peaks, peak_dtype_seen, keys = [], "", list(steps)
    for done in range(1, 3 * repeats + 1):
        widened = False
        for key in keys[done % len(keys):] + keys[:done % len(keys)]:
            t, seen = timer(steps[key], iters, device), times[key]
            widened |= not seen or t < min(seen) or t > max(seen)
            seen.append(t)
        flops_per_s, peak_dtype_seen = peak(peak_dtype, device)
        peaks.append(flops_per_s)
        if done >= repeats and not widened:
            break
    return times, peaks, peak_dtype_seen


def verdict(ours: Spread, theirs: Spread) -> str:
    """A win (or a loss) only when the two ranges of img/s do not overlap."""
    if ours.min > theirs.max:
        return "win"
    if theirs.min > ours.max:
        return "loss"
    return "within spread"


def comparisons(rows: list[dict], peers: tuple[str, ...]) -> list[dict]:
    """vitkit against each peer: execution for execution, and each at its best (highest median);
    the ratio of medians with its verdict, and the ratios of the two rows' runs in each round."""
    by = {(r["library"], r["execution"]): Spread(**r["img_per_s"]) for r in rows}
    by_round = {(r["library"], r["execution"]): r["img_per_s_by_round"] for r in rows}
    executions = [r["execution"] for r in rows if r["library"] == "vitkit"]
    best = {lib: max(executions, key=lambda e: by[(lib, e)].median) for lib in ("vitkit", *peers)}
    out = []
    for peer in peers:
        pairs = [(f"{e} vs {e}", e, e) for e in executions]
        if len(executions) > 1:
            pairs.append(("best vs best", best["vitkit"], best[peer]))
        for kind, ours, theirs in pairs:
            a, b = by[("vitkit", ours)], by[(peer, theirs)]
            paired = [x / y for x, y in zip(by_round[("vitkit", ours)], by_round[(peer, theirs)], strict=True)]
            out.append({"peer": peer, "kind": kind, "vitkit_execution": ours, "peer_execution": theirs,
                        "ratio_of_medians": a.median / b.median, "verdict": verdict(a, b),
                        "ratio_by_round": asdict(Spread.of(paired)), "rounds_won": sum(x > 1 for x in paired)})
    return out


def build_models(config, compare: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """vitkit's model with a random head (the training init, zeros, gives all-zero logits, which
    would hide any difference) and each peer's own model of the same architecture."""
    torch.manual_seed(0)
    ours = ViT(config)
    torch.nn.init.normal_(ours.head.weight, std=config.dim**-0.5)
    return {"vitkit": ours, **{name: _peer(name, ours) for name in compare}}


def bench(model_name: str = "vit_s16", image_size: int | None = None, batch: int = 16, dtype: str = "bf16",
          mode: str = "infer", compare: tuple[str, ...] = (), repeats: int = 7, iters: int = 2,
          device: str | None = None, compile: bool = False, bf16: str = "weights",
          build: Callable[..., dict] = build_models, measure: Callable[..., tuple] = measure) -> dict:
    """Time vitkit and the peers in `compare` on one architecture, eager (and compiled with
    `compile`); see the module docstring. `bf16`: "weights" or "autocast", for every library
    (training always uses autocast). `build` and `measure` make the models and time them
    (`build_models`, `measure`; a test passes its own)."""
    if bf16 not in BF16_WAYS:
        raise ValueError(f"bf16 handling {bf16!r}: use one of {', '.join(BF16_WAYS)}")
    runtime.keep_freed_memory()  # as every vitkit command runs; process-wide, so the peers run with it too
    dev = runtime.device(device)
    bf16 = "autocast" if mode == "train" else bf16
    config = get_config(model_name, num_classes=10, **({"image_size": image_size} if image_size else {}))
    models = {name: m.to(dev) for name, m in build(config, compare).items()}
    x = torch.randn(batch, config.in_channels, *config.image_hw, device=dev)
    with torch.inference_mode():
        reference = models["vitkit"].eval()(x).float()
    executions = ("eager", "compiled") if compile else ("eager",)
    runners = {f"{name}/{e}": runner(m, mode, dtype, x, name == "vitkit", e == "compiled", bf16)
               for name, m in models.items() for e in executions}
    errors = {key: ((r.output() - reference).abs().max() / reference.abs().max()).item()
              if key.split("/")[0] in SAME_WEIGHTS else None for key, r in runners.items()}
    times, peaks, peak_dtype = measure({k: r.step for k, r in runners.items()}, repeats, iters, DTYPES[dtype], dev)
    # What each library computes: vitkit's last block only for the class token (ViTConfig.head_tokens)
    macs = {lib: flops(config, every_token=lib != "vitkit") * (3 if mode == "train" else 1) for lib in models}
    peak = Spread.of(peaks)
    rows = [row(key, t, batch, macs, peaks, errors[key], tolerance(dtype, config.depth)) for key, t in times.items()]
    return {"model": model_name, "image_size": list(config.image_hw), "batch": batch, "dtype": dtype, "mode": mode,
            "bf16": bf16 if dtype == "bf16" else None, "device": str(dev), "threads": torch.get_num_threads(),
            "executions": list(executions), "rounds": len(peaks), "gmacs_per_image": flops(config) / 1e9,
            "peer_gmacs_per_image": flops(config, every_token=True) / 1e9,
            "matmul_peak": {"dtype": peak_dtype, "tflops": {k: v / 1e12 for k, v in asdict(peak).items()}},
            "peak_memory_bytes": _memory(dev), "rows": rows, "comparisons": comparisons(rows, compare)}


def row(key: str, seconds: list[float], batch: int, macs: dict[str, float], peaks: list[float],
        error: float | None, limit: float) -> dict:
    """One library's row: images/s over the rounds, its share of the matmul peak (of all rounds,
    and of each round's own), and how far its logits are from vitkit's."""
    library, execution = key.split("/")
    by_round = [batch / s for s in seconds]
    rate = Spread.of(by_round)
    of_round_peak = [2 * macs[library] * r / p for r, p in zip(by_round, peaks, strict=True)]
    return {"library": library, "execution": execution, "img_per_s": asdict(rate), "img_per_s_by_round": by_round,
            "latency_s": asdict(Spread.of(seconds)), "gflop_per_s": 2 * macs[library] * rate.median / 1e9,
            "fraction_of_peak": 2 * macs[library] * rate.median / Spread.of(peaks).median,
            "fraction_of_round_peak": asdict(Spread.of(of_round_peak)), "max_rel_diff_vs_reference": error,
            "matches_reference": None if error is None else error < limit}


def _memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report_lines(r: dict) -> list[str]:
    """`vitkit bench` for people: one line per row, and one per comparison."""
    handling = {"weights": ", weights cast to bf16 for every library", "autocast": ", autocast for every library",
                None: ""}[r["bf16"]]
    p = r["matmul_peak"]["tflops"]
    lines = [f"{r['model']} {r['image_size'][0]}x{r['image_size'][1]}, batch {r['batch']}, {r['dtype']}{handling}, "
             f"{r['mode']}, {r['device']}, {r['threads']} threads, {r['rounds']} rounds; "
             f"{r['gmacs_per_image']:.2f} GMACs/image" + (
                 f" (the peers {r['peer_gmacs_per_image']:.2f}: the last block for every token)"
                 if r["peer_gmacs_per_image"] != r["gmacs_per_image"] and r["comparisons"] else ""),
             f"matmul peak ({r['matmul_peak']['dtype']}): min {p['min']:.3f} / median {p['median']:.3f} / "
             f"max {p['max']:.3f} TFLOP/s",
             f"{'library':<12} {'execution':<9} {'img/s min':>9} {'median':>8} {'max':>8} {'GFLOP/s':>8} "
             f"{'of peak':>7} {'by round':>8} {'vs ref':>8}"]
    for row in r["rows"]:
        s, diff = row["img_per_s"], row["max_rel_diff_vs_reference"]
        shown = "own wts" if diff is None else f"{diff:.1e}" + ("" if row["matches_reference"] else " DIFFERS")
        lines.append(f"{row['library']:<12} {row['execution']:<9} {s['min']:>9.1f} {s['median']:>8.1f} "
                     f"{s['max']:>8.1f} {row['gflop_per_s']:>8.0f} {100 * row['fraction_of_peak']:>6.1f}% "
                     f"{100 * row['fraction_of_round_peak']['median']:>7.1f}% {shown:>8}")
    lines.append("(of peak: the median img/s against the median peak; by round: the median of each round's "
                 "img/s against that round's peak)")
    for c in r["comparisons"]:
        ratio = c["ratio_by_round"]
        lines.append(f"vitkit ({c['vitkit_execution']}) vs {c['peer']} ({c['peer_execution']}), {c['kind']}: "
                     f"{c['ratio_of_medians']:.2f}x of medians: {c['verdict']}; round by round "
                     f"{ratio['min']:.2f}x / {ratio['median']:.2f}x / {ratio['max']:.2f}x, faster in {c['rounds_won']} "
                     f"of {r['rounds']}")
    return lines
