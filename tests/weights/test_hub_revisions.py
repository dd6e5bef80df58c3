"""Hub downloads pinned: --revision picks a branch, tag or commit of hf-hub: weights, a loaded
model says which commit its weights came from, and a run started from them records it. Tested
on a Hub cache folder written here (two commits of one repository), read offline."""

import json
import logging

import pytest
import torch

import vitkit
from vitkit.cli import main

REPO, OLD, NEW = "someone/tiny-vit", "a" * 40, "b" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Two commits of REPO: main points at OLD, the tag v2 at NEW; their heads' biases differ."""
    import huggingface_hub.constants as constants

    storage = tmp_path / "cache" / ("models--" + REPO.replace("/", "--"))
    for commit, bias in ((OLD, 1.0), (NEW, 2.0)):
        model = vitkit.create_model("vit_ti4_28", depth=1, num_classes=10, in_channels=1, image_size=16)
        with torch.no_grad():
            model.head.bias.fill_(bias)
        model.save_pretrained(storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(OLD)
    (storage / "refs" / "v2").write_text(NEW)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize(("revision", "commit", "bias"), [(None, OLD, 1.0), ("v2", NEW, 2.0), (NEW, NEW, 2.0)])
def test_a_revision_picks_the_weights_and_the_model_says_which_commit(hub, revision, commit, bias):
    model = vitkit.load(f"hf-hub:{REPO}", revision=revision)
    assert model.revision == commit and model.head.bias[0].item() == bias


def test_local_weights_have_no_revision(hub, capsys):
    vitkit.create_model("vit_ti4_28", depth=1).save_pretrained(hub / "local")
    assert vitkit.load(hub / "local").revision is None
    assert main(["convert", str(hub / "nowhere"), "--out", str(hub / "x"), "--revision", "v2"]) == 2
    assert "names a version on the Hugging Face Hub" in capsys.readouterr().err


def test_a_run_records_the_commit_its_init_weights_came_from(hub, capsys):
    out = hub / "run"
    assert main(["train", "--init", f"hf-hub:{REPO}", "--revision", "v2", "--epochs", "1", "--batch-size", "64",
                 "--out", str(out)]) == 0
    written = json.loads((out / "config.json").read_text())
    assert written["recipe"]["init"] == f"hf-hub:{REPO}" and written["recipe"]["revision"] == "v2"
    assert written["init_commit"] == NEW  # the commit v2 named when the run started
    assert torch.load(out / "checkpoint.pt", weights_only=True)["init_commit"] == NEW
    # the same command again resumes (torchrun's restarts repeat it), and keeps the commit
    assert main(["train", "--resume", str(out), "--revision", "v2", "--epochs", "2"]) == 2  # --epochs may not change
    assert main(["train", "--resume", str(out), "--revision", "v2"]) == 0
    assert json.loads((out / "config.json").read_text())["init_commit"] == NEW


def test_convert_says_which_commit_it_converted(hub, capsys):
    assert main(["convert", f"hf-hub:{REPO}", "--out", str(hub / "converted"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == OLD


def test_a_run_records_its_teachers_commit_and_resumes_with_it(hub, caplog):
    out = hub / "distilled"
    args = ["train", "--teacher", f"hf-hub:{REPO}", "--teacher-revision", "v2", "--epochs", "1", "--batch-size", "64",
            "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="vitkit"):
        assert main(args) == 0
    assert f"teacher: hf-hub:{REPO} at commit {NEW}" in caplog.text
    assert torch.load(out / "checkpoint.pt", weights_only=True)["teacher_commit"] == NEW
    (hub / "cache" / ("models--" + REPO.replace("/", "--")) / "refs" / "v2").write_text(OLD)  # the tag moves
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitkit"):
        assert main(["train", "--resume", str(out)]) == 0
    assert f"at commit {NEW}" in caplog.text  # the commit the run started with, not where v2 points now
