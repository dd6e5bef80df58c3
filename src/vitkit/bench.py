"""`vitkit bench`: images/s of vitkit and its peers on the same model, measured the same way in
one process, against the machine's own matrix-multiply peak measured in the same run.

Each library builds the same architecture (the same weights where its format allows); every
timing gets a warm-up, then the libraries take turns (so drifting clocks hit all of them alike),
and the median of the repeats is reported.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from vitkit.extras import require
from vitkit.model.fast import DTYPES, for_inference, training_attention
from vitkit.model.flops import flops
from vitkit.model.presets import get_config
from vitkit.model.vit import ViT

PEERS = ("timm", "hf", "torchvision", "vit-pytorch")


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in `dtype`: what this machine can do at best."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[2:])


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
        from vitkit.weights import hf as hf_format

        state, config = hf_format.from_vitkit(model)
        config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
        peer = transformers.ViTForImageClassification(transformers.ViTConfig(**config))
        peer.load_state_dict(state, strict=False)
        return _Logits(peer)
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


def step_runner(model: torch.nn.Module, mode: str, dtype: str, batch: torch.Tensor, own: bool,
                compile: bool = False) -> Callable[[], None]:
    """One timed unit of work. vitkit runs its fast paths (bf16 weights for inference, the CPU
    training attention backend, torch.compile if asked); peers their documented ones (bf16
    autocast). Training always uses autocast with fp32 master weights."""
    device = batch.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    if mode == "infer":
        if own:
            model = for_inference(model, dtype, compile)
            x = batch.to(DTYPES[dtype])

            def step():
                with torch.inference_mode():
                    model(x)
            return step
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(batch)
        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 10, (len(batch),), device=device)
    forward = torch.compile(model) if own and compile else model

    def step():
        with autocast, training_attention(device) if own else nullcontext():
            loss = torch.nn.functional.cross_entropy(forward(batch).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@torch.inference_mode()
def agreement(model: ViT, dtype: str, compile: bool, images: int, batch: int, device: torch.device) -> dict:
    """How far vitkit's fast path is from the fp32 reference on random images: top-1 agreement
    and the largest logit difference."""
    reference = model.eval().to(device)
    fast = for_inference(copy.deepcopy(model), dtype, compile)
    same, worst, done = 0, 0.0, 0
    generator = torch.Generator().manual_seed(1)
    while done < images:
        n = min(batch, images - done)
        x = torch.randn(n, model.config.in_channels, *model.config.image_hw, generator=generator).to(device)
        want, got = reference(x), fast(x.to(DTYPES[dtype])).float()
        same += (want.argmax(1) == got.argmax(1)).sum().item()
        worst = max(worst, (want - got).abs().max().item())
        done += n
    return {"images": images, "top1_agreement": same / images, "max_abs_error": worst}


def bench(model_name: str = "vit_s16", image_size: int | None = None, batch: int = 16, dtype: str = "bf16",
          mode: str = "infer", compare: tuple[str, ...] = (), repeats: int = 5, iters: int = 2,
          device: str | None = None, compile: bool = False, agreement_images: int = 0) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"image_size": image_size} if image_size else {}
    config = get_config(model_name, num_classes=10, **overrides)
    torch.manual_seed(0)
    ours = ViT(config)
    # a random head: the training init (zeros) gives all-zero logits, which would hide any error
    torch.nn.init.normal_(ours.head.weight, std=config.dim**-0.5)
    models = {"vitkit": ours}
    for name in compare:
        models[name] = _peer(name, ours)
    x = torch.randn(batch, config.in_channels, *config.image_hw, device=dev)
    check = agreement(ours, dtype, compile, agreement_images, batch, dev) if agreement_images and mode == "infer" \
        else None
    steps = {name: step_runner(m.to(dev), mode, dtype, x, name == "vitkit", compile) for name, m in models.items()}
    for step in steps.values():  # warm-up: allocator, kernels, first-call costs
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(dev)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            _sync(dev)
            times[name].append((time.perf_counter() - start) / iters)
    peak = matmul_peak(DTYPES[dtype], dev)
    macs = flops(config) * (3 if mode == "train" else 1)
    rows = {}
    for name, t in times.items():
        latency = statistics.median(t)
        rate = batch / latency
        rows[name] = {"img_per_s": rate, "latency_median_s": latency,
                      "latency_p90_s": sorted(t)[min(len(t) - 1, int(0.9 * len(t)))],
                      "gflop_per_s": 2 * macs * rate / 1e9, "fraction_of_peak": 2 * macs * rate / peak}
    for name in compare:
        rows[name]["vitkit_speedup"] = rows["vitkit"]["img_per_s"] / rows[name]["img_per_s"]
    memory = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model_name, "image_size": list(config.image_hw), "batch": batch, "dtype": dtype, "mode": mode,
            "device": str(dev), "threads": torch.get_num_threads(), "compile": compile,
            "gmacs_per_image": flops(config) / 1e9, "matmul_peak_tflops": peak / 1e12, "peak_memory_bytes": memory,
            "agreement_with_fp32": check, "results": rows}
