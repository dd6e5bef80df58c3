"""The fast paths compute the reference function: bf16 weights, torch.compile with freezing, and
the CPU training attention backend, for every preset family (one block each, to stay small).
The device is a parameter, so the same tests run on a GPU where there is one."""

import copy

import pytest
import torch

from vitkit import ViT, get_config
from vitkit.model.fast import for_inference, training_attention

FAMILIES = ["vit_ti16", "vit_s16", "vit_b16", "vit_l16", "vit_h14"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


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
def test_inference_fast_path(name, compile, device):
    model = reference(name, device)
    x = images(model, device)
    with torch.inference_mode():
        want = model(x)
        fp32 = for_inference(copy.deepcopy(model), "fp32", compile)(x)
        bf16 = for_inference(copy.deepcopy(model), "bf16", compile)(x.bfloat16())
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert (fp32 - want).abs().max().item() < 1e-5
    # bf16 keeps 8 bits of mantissa: logits of size ~1 move by a few hundredths, not more
    assert (bf16.float() - want).abs().max().item() < 0.1 * want.abs().max().item()
    assert (bf16.float().argmax(1) == want.argmax(1)).float().mean().item() >= 0.8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_fast_path_gives_the_same_gradients(name, compile, device):
    model = reference(name, device).train()
    x = images(model, device, 4)

    def grads(forward, context):
        model.zero_grad()
        with context:
            forward(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    fast = grads(torch.compile(model) if compile else model, training_attention(torch.device(device)))
    plain = grads(model, torch.enable_grad())
    for a, b in zip(fast, plain, strict=True):
        assert (a - b).abs().max().item() < 1e-5
