"""Training on each device there is: a step computes what the CPU computes, and a run stopped and
resumed ends where the uninterrupted one does. On a machine without a GPU only the CPU runs;
`benchmarks/gpu.sh` runs these (and tests/model/test_fast.py) on CUDA where there is one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import vitkit
from vitkit.train import trainer
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import Run, start

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GPUS = DEVICES[1:] or [pytest.param("cuda", marks=pytest.mark.skip(reason="no GPU here"))]
FIELDS = dict(epochs=2, batch_size=64, workers=0, precision="fp32", seed=2)


def ready_run(device: str, out: Path, fields: dict = FIELDS) -> Run:
    """A digits run built and ready to take steps by hand, from its first epoch's batches."""
    run = start("digits", Recipe(**fields), set(fields), out=out, device=device)
    run.feed.sampler.set_epoch(0)
    return run


def one_step_weights(device: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    run = ready_run(device, tmp_path / device)
    run.step(*next(iter(run.feed.loader))[:2])
    return {k: v.detach().cpu() for k, v in run.parts.model.state_dict().items()}


@pytest.mark.parametrize("device", GPUS)
def test_a_training_step_on_the_gpu_computes_what_the_cpu_computes(tmp_path, device):
    ours, cpu = one_step_weights(device, tmp_path), one_step_weights("cpu", tmp_path / "ref")
    for key in cpu:  # GPU kernels sum in another order (TF32 is off in fp32): within 1e-4
        assert (ours[key] - cpu[key]).abs().max().item() <= 1e-4, key


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_steps_compute_what_eager_steps_compute(tmp_path, device, monkeypatch):
    """--compile's step; on one GPU it is replayed as a CUDA graph, whose input and output buffers
    the next step reuses: each of three steps' loss, and the gradients the optimizer is given,
    match eager steps'."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # else eager's and the graph's convolutions differ

    def three_steps(compiled: bool) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
        run = ready_run(device, tmp_path / str(compiled), {**FIELDS, "compile": compiled})
        assert getattr(run.compute, "cuda_graphs", False) == (compiled and device == "cuda")
        losses, grads, batches, optimizer_step = [], [], iter(run.feed.loader), run.parts.optimizer.step

        def record_then_step():
            grads.append({n: p.grad.detach().cpu().clone() for n, p in run.parts.model.named_parameters()})
            optimizer_step()

        run.parts.optimizer.step = record_then_step
        for _ in range(3):
            before = run.progress.totals.loss_sum
            run.step(*next(batches)[:2])
            losses.append(run.progress.totals.loss_sum - before)
        assert not compiled or run.compute.compiled is not None  # no fallback to eager
        return losses, grads

    (compiled_losses, compiled_grads), (eager_losses, eager_grads) = three_steps(True), three_steps(False)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert len(set(eager_losses)) == 3  # three different batches, so a stale input would show
    for step, (ours, reference) in enumerate(zip(compiled_grads, eager_grads, strict=True)):
        for name in reference:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, step=step, name=name: f"step {step}, {name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_steps_draw_patch_dropout_from_each_steps_seed(tmp_path, device):
    """The trainer seeds each step; patch dropout's draw inside the compiled step (on one GPU, a
    replayed CUDA graph) must follow that seed: another seed drops other patches, the same seed
    the same ones. A draw frozen into the graph would give every step the same patches."""
    run = ready_run(device, tmp_path, {**FIELDS, "compile": True, "patch_dropout": 0.5})
    torch.nn.init.normal_(run.parts.model.head.weight)  # the zero-initialised head's logits ignore the patches
    batch = run.feed.prepare(*next(iter(run.feed.loader))[:2], 0, 0)

    def loss(seed: int) -> float:
        torch.manual_seed(seed)
        losses, _ = run.compute(batch.images, batch.targets, batch.weights)
        losses.sum().backward()  # as in a step: the graph's backward runs before the next replay
        run.parts.optimizer.zero_grad(set_to_none=True)
        return losses.sum().item()

    skips = counters["inductor"]["cudagraph_skips"]  # inductor falls back without graphs quietly
    loss(0), loss(0)  # under CUDA graphs: the warm-up, then the recording; replays from here on
    first, other, again = loss(1), loss(2), loss(1)
    assert run.compute.compiled is not None and run.compute.cuda_graphs == (device == "cuda")
    assert counters["inductor"]["cudagraph_skips"] == skips
    assert other != pytest.approx(first, rel=1e-3)
    assert again == pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize("device", GPUS)
def test_vitkit_on_the_gpu_computes_timms_logits(device):
    import timm

    from helpers import randomize
    from vitkit.weights import timm as timm_format

    theirs = randomize(timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=192, depth=4, num_heads=3, num_classes=10)).to(device)
    config, state = timm_format.to_vitkit({k: v.cpu() for k, v in theirs.state_dict().items()}, {"heads": 3})
    ours = vitkit.ViT(config)
    ours.load_state_dict(state)
    ours = ours.to(device).eval()
    x = torch.randn(8, 3, 64, 64, device=device)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize(("device", "compiled"), [(d, False) for d in DEVICES] + [pytest.param(
    "cuda", True, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here"))])
def test_stopped_and_resumed_run_ends_like_the_uninterrupted_one(tmp_path, device, compiled, monkeypatch):
    """On one GPU --compile replays CUDA graphs, whose random draws and buffers a resume must restore too."""
    fields = {**FIELDS, "compile": compiled}
    whole = trainer.train("digits", Recipe(**fields), set(fields), out=tmp_path / "whole", device=device)

    def stop(run):
        if (run.progress.epoch, run.progress.step) == (1, 3):
            run.stop.requested = True

    monkeypatch.setattr(trainer, "STEP_HOOKS", [stop])
    with pytest.raises(KeyboardInterrupt):
        trainer.train("digits", Recipe(**fields), set(fields), out=tmp_path / "stopped", device=device)
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    resumed = trainer.train(resume=tmp_path / "stopped", device=device)
    assert resumed["val_top1"] == whole["val_top1"]
    off = weight_difference(tmp_path / "whole", tmp_path / "stopped")
    assert off <= resume_tolerance(device, fields, tmp_path, whole=tmp_path / "whole"), off


def weight_difference(run_a: Path, run_b: Path) -> float:
    a, b = load_file(run_a / "model.safetensors"), load_file(run_b / "model.safetensors")
    return max((a[k] - b[k]).abs().max().item() for k in a)


def resume_tolerance(device: str, fields: dict, tmp_path: Path, whole: Path) -> float:
    """0 on the CPU, where training is deterministic. On a GPU some backward kernels add with
    atomics (attention, convolution weights), so two uninterrupted runs differ already: a resumed
    run may differ from one by that much (times 4: the restart is one more such perturbation),
    and by no more than 1e-5 where the GPU run is deterministic."""
    if device == "cpu":
        return 0.0
    trainer.train("digits", Recipe(**fields), set(fields), out=tmp_path / "again", device=device)
    return max(1e-5, 4 * weight_difference(whole, tmp_path / "again"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: NCCL beside gloo")
def test_torchrun_with_one_process_trains_on_the_gpu(tmp_path):
    """The multi-process path on one GPU: NCCL for the model, gloo for the CPU-side decisions."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "vitkit", "train", "--epochs", "1", "--out", str(tmp_path / "r"), "--json"],
                          capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["val_top1"] > 0.3
