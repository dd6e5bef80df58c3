"""`vitkit bench`: images/s of vitkit and its peers on the same model, measured the same way in
one process, against the machine's own matrix-multiply peak measured in the same run.

Each library builds the same architecture (the same weights where its format allows); every
timing gets a warm-up, then the libraries take turns (so drifting clocks hit all of them alike),
and the median of the repeats is reported.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from vitkit.model.flops import flops
from vitkit.model.presets import get_config
from vitkit.model.vit import ViT

PEERS = ("timm", "hf", "torchvision", "vit-pytorch")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
        from timm.models.vision_transformer import VisionTransformer

        from vitkit.weights import timm as timm_format

        state, kwargs = timm_format.from_vitkit(model)
        peer = VisionTransformer(**kwargs)
        peer.load_state_dict(state)
        return peer
    if name == "hf":
        import transformers

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
        import vit_pytorch

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


def _runner(model: torch.nn.Module, mode: str, dtype: str, batch: torch.Tensor, own: bool) -> Callable[[], None]:
    """One timed unit of work. vitkit infers with bf16 weights; peers with bf16 autocast (their
    documented mixed-precision path). Training always uses autocast with fp32 master weights."""
    device = batch.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    if mode == "infer":
        model.eval()
        if own and dtype == "bf16":
            model.to(torch.bfloat16)
            x = batch.to(torch.bfloat16)

            def step():
                with torch.inference_mode():
                    model(x)
            return step

        def step():
            with torch.inference_mode(), autocast:
                model(batch)
        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 10, (len(batch),), device=device)

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(batch).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench(model_name: str = "vit_s16", image_size: int | None = None, batch: int = 16, dtype: str = "bf16",
          mode: str = "infer", compare: tuple[str, ...] = (), repeats: int = 5, iters: int = 2,
          device: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"image_size": image_size} if image_size else {}
    config = get_config(model_name, num_classes=10, **overrides)
    torch.manual_seed(0)
    ours = ViT(config)
    models = {"vitkit": ours}
    for name in compare:
        models[name] = _peer(name, ours)
    x = torch.randn(batch, config.in_channels, *config.image_hw, device=dev)
    steps = {name: _runner(m.to(dev), mode, dtype, x, name == "vitkit") for name, m in models.items()}
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
            "device": str(dev), "threads": torch.get_num_threads(), "gmacs_per_image": flops(config) / 1e9,
            "matmul_peak_tflops": peak / 1e12, "peak_memory_bytes": memory, "results": rows}
