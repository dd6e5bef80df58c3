"""`vitkit bench` runs against every peer and reports consistent numbers (speed itself is a
benchmark, not a test)."""

import json
import sys

from vitkit.cli import main


def test_bench_compares_all_peers(capsys):
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--dtype", "fp32",
                 "--compare", "timm,hf,torchvision,vit-pytorch", "--repeats", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["results"]) == {"vitkit", "timm", "hf", "torchvision", "vit-pytorch"}
    assert r["matmul_peak_tflops"] > 0 and r["gmacs_per_image"] > 0
    for name, row in r["results"].items():
        assert row["img_per_s"] == 2 / row["latency_median_s"]
        if name != "vitkit":
            assert row["vitkit_speedup"] == r["results"]["vitkit"]["img_per_s"] / row["img_per_s"]


def test_bench_training_step_bf16(capsys):
    assert main(["bench", "--model", "vit_ti4_32", "--batch", "4", "--mode", "train", "--compare", "timm",
                 "--repeats", "1"]) == 0
    assert "vitkit/x" in capsys.readouterr().out


def test_a_missing_peer_library_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--compare", "timm"]) == 2
    assert "pip install 'vitkit[peers]'" in capsys.readouterr().err
