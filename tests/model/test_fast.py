"""The fast paths compute the reference function: bf16 weights, torch.compile with freezing, and
the CPU training attention backend. Every preset family is checked with one block (eager and
compiled); Ti, S and B/16 at full depth (B/16 also at 224 px), and error growth up to ViT-H's
32 blocks at Ti's width; and a model trained on scikit-learn's digits is checked on held-out real
digits. The device is a parameter, so the same tests run on a GPU where there is one."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit import ViT, ViTConfig, get_config
from vitkit.data.arrays import digits
from vitkit.model import fast
from vitkit.model.fast import DTYPES, AtenGELU, for_inference, use_training_kernels

FAMILIES = ["vit_ti16", "vit_s16", "vit_b16", "vit_l16", "vit_h14"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits: rounding to bf16 moves a value by at most 2^-8 of it


def bf16_tolerance(depth: int) -> float:
    """Largest allowed |bf16 - fp32| logit error, as a fraction of the largest fp32 logit.

    A bf16 forward pass rounds the residual stream at the input, after the patch embedding, after
    each of the 2 * depth residual additions (attention, MLP) and at the head: n = 2 * depth + 3
    roundings, each off by at most u = 2^-8 relative. Independent rounding errors add like a random
    walk, sqrt(n) * u; we allow three times that. (Measured: 10-45% of this bound.)"""
    return 3 * math.sqrt(2 * depth + 3) * BF16_UNIT_ROUNDOFF


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def reference(name: str, device: str) -> ViT:
    torch.manual_seed(0)
    model = ViT(get_config(name, depth=1, image_size=28 if name.endswith("14") else 32, num_classes=10))
    torch.nn.init.normal_(model.head.weight, std=model.config.dim**-0.5)  # zeros would hide errors
    return model.to(device).eval()


def images(model: ViT, device: str, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, *model.config.image_hw, generator=torch.Generator().manual_seed(1)).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_inference_fast_path_computes_the_reference_logits(name, compile, device, monkeypatch):
    # fp32 means fp32 here: cuDNN's default TF32 convolutions round the patch embedding to 10 bits,
    # and the compiled graph may pick another convolution algorithm than eager (seen on an H100: 1e-3)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = reference(name, device)
    x = images(model, device)
    with torch.inference_mode():
        want = model(x)
        fp32 = for_inference(copy.deepcopy(model), "fp32", compile)(x)
        bf16 = for_inference(copy.deepcopy(model), "bf16", compile)(x.bfloat16())
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert (fp32 - want).abs().max().item() < 1e-5
    assert relative_error(bf16, want) < bf16_tolerance(depth=1)


def trained_scale(model: ViT) -> ViT:
    """Weights at the scale training gives them (std 1/sqrt(fan-in)), so that every block moves
    the output; at the initialisation's std of 0.02 a dropped block would hide in the rounding."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight[0].numel() ** -0.5)
    return model.eval()


def skip_block(model: ViT, index: int) -> ViT:
    """A copy whose block `index` adds nothing to the residual stream: a structural error."""
    broken = copy.deepcopy(model)
    for layer in (broken.blocks[index].attn.proj, broken.blocks[index].mlp.fc2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return broken


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "overrides", "count"), [
    ("vit_ti16", {"image_size": 32}, 16),
    ("vit_s16", {"image_size": 32}, 16),
    ("vit_b16", {"image_size": 32}, 16),
    ("vit_b16", {}, 2),  # the real thing: 224 px, 197 tokens, 12 blocks
    ("vit_ti16", {"image_size": 32, "depth": 32}, 16),  # ViT-H's depth at Ti's width: error growth
], ids=["ti16", "s16", "b16", "b16-224px", "ti16-depth32"])
def test_bf16_at_full_depth_within_bf16_rounding(name, overrides, count, device):
    torch.manual_seed(0)
    model = trained_scale(ViT(get_config(name, num_classes=10, **overrides))).to(device)
    x = torch.randn(count, 3, *model.config.image_hw, generator=torch.Generator().manual_seed(1)).to(device)
    tolerance = bf16_tolerance(model.config.depth)
    with torch.inference_mode():
        want = model(x)
        bf16 = for_inference(model, "bf16")(x.bfloat16())
        broken = skip_block(model, model.config.depth // 2)(x)
    assert relative_error(bf16, want) < tolerance
    assert relative_error(broken, want) > 2 * tolerance  # the tolerance would catch a missing block


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_fast_path_gives_the_same_gradients(name, compile, device):
    model = reference(name, device).train()
    x = images(model, device, 4)

    def grads(forward):
        model.zero_grad()
        forward(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads(model)
    use_training_kernels(model, torch.device(device))
    assert isinstance(model.blocks[0].mlp.act, AtenGELU) == (device == "cpu")
    fast = grads(torch.compile(model) if compile else model)
    for a, b in zip(fast, plain, strict=True):
        assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aten_gelu_is_nn_gelu_eager_and_compiled(approximate, dtype, monkeypatch):
    """The training path's opaque GELU computes what nn.GELU does, values and gradients, bit for bit
    in eager mode (nn.GELU itself, without the custom op's dispatch cost) and under torch.compile,
    where it stays one call to ATen's kernel instead of inductor's own erf."""
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)).to(dtype)
    grad = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)).to(dtype)

    def run(act):
        leaf = x.clone().requires_grad_()
        out = act(leaf)
        out.backward(grad)
        return out, leaf.grad

    want = run(nn.GELU(approximate))
    with monkeypatch.context() as eager:
        eager.setattr(fast, "aten_gelu", None)  # eager runs nn.GELU's own call, not the custom op
        assert all(torch.equal(a, b) for a, b in zip(run(AtenGELU(approximate)), want, strict=True))
    compiled, code = run_and_get_code(run, torch.compile(AtenGELU(approximate)))
    assert all(torch.equal(a, b) for a, b in zip(compiled, want, strict=True))
    assert "vitkit.gelu.default" in "\n".join(code) and "erf(" not in "\n".join(code)  # no inductor erf


@pytest.fixture(scope="module")
def digits_model() -> tuple[ViT, torch.Tensor, torch.Tensor]:
    """A small ViT trained for 300 AdamW steps on scikit-learn's digits (about 90% held-out top-1),
    with the 360 held-out digits. One thread: a model this small trains faster on one."""
    (x_train, y_train), (x_test, y_test), _ = digits()
    scale = lambda images: images.float() / 127.5 - 1  # noqa: E731
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=2, in_channels=1, num_classes=10, dim=32, depth=4, heads=2,
                          mlp_dim=64, pool="mean", class_token=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(300):
            batch = torch.randint(0, len(x_train), (64,), generator=generator)
            loss = F.cross_entropy(model(scale(x_train[batch])), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), scale(x_test), y_test


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_bf16_agrees_with_fp32_on_real_digits_through_a_trained_model(digits_model, compile):
    model, images, labels = digits_model
    with torch.inference_mode():
        want = model(images)
        bf16 = for_inference(model, "bf16", compile)(images.bfloat16())
    assert (want.argmax(1) == labels).float().mean().item() > 0.85  # it did learn the digits
    assert relative_error(bf16, want) < bf16_tolerance(model.config.depth)
    # Only digits within bf16's error of a tie (about 7% of them) can change class, and few do:
    # at most 3 of the 360 (measured over five training seeds: 0-2, eager and compiled).
    assert (bf16.float().argmax(1) == want.argmax(1)).float().mean().item() >= 0.99


def test_for_inference_leaves_the_callers_model_as_it_was():
    model = reference("vit_ti16", "cpu").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = for_inference(model, "bf16")
    assert next(fast.parameters()).dtype == torch.bfloat16 and not fast.training
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compiled_inference_folds_the_weights_into_the_graph(dtype):
    """Freezing makes the weights constants of the compiled graph (inductor names them
    `_frozen_param`), so that it can pre-pack them; without it they are graph inputs."""
    from torch._inductor.utils import run_and_get_code

    model = reference("vit_ti16", "cpu")
    fast = for_inference(model, dtype, compile=True)
    x = images(model, "cpu").to(DTYPES[dtype])
    with torch.inference_mode():
        out, code = run_and_get_code(fast, x)
    assert out.dtype == DTYPES[dtype] and "_frozen_param" in "\n".join(code)
    assert not fast.training and fast.config == model.config  # eval mode; the model's attributes
