"""Patch dropout and stochastic depth drawn from a key per image: an image's draws depend on its
key alone, not on the batch it is in (so N processes, each with a share of the batch, draw what
one process draws), and they are still random (each key, each block and each token its own)."""

import torch

import vitkit
from helpers import randomize
from vitkit.model import noise


def test_an_images_draws_do_not_depend_on_its_batch():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=3, patch_dropout=0.7, drop_path=0.5)).train()
    x = torch.randn(6, 3, 32, 32)
    keys = noise.keys(1234, torch.arange(6))
    whole = model(x, noise=keys)
    halves = torch.cat([model(x[:3], noise=keys[:3]), model(x[3:], noise=keys[3:])])
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(x, noise=noise.keys(1235, torch.arange(6))), whole)  # another step: other draws


def test_keyed_draws_are_uniform_and_differ_by_key_salt_and_counter():
    keys = noise.keys(7, torch.arange(2048))
    u = noise.uniform(keys, 49, salt=0)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - 12 ** -0.5) < 0.01
    assert u.min() >= 0 and u.max() < 1 and len(set(keys.tolist())) == 2048
    assert not torch.equal(noise.uniform(keys, 49, salt=1), u)
    kept = u.argsort(dim=1)[:, :15]  # patch dropout's choice: every token kept about equally often
    counts = torch.bincount(kept.flatten(), minlength=49).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_without_keys_the_model_draws_from_torchs_stream_as_before():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, patch_dropout=0.5)).train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    assert torch.equal(model(x), a)
