"""`vitkit bench` measures what it says: every library's row runs that library's model with the
same weights (where the format allows) and computes the same logits; the matmul peak is taken in
the benchmark's dtype; rounds interleave the rows and repeat until the spread stops growing; a
win is a win only beyond the spread. (Speed itself is a benchmark, not a test.)"""

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from helpers import randomize
from vitkit.bench import Spread, bench, build_models, measure, report_lines, runner, verdict
from vitkit.cli import main
from vitkit.data.arrays import digits
from vitkit.model.presets import get_config

ALL = ("timm", "hf", "torchvision", "vit-pytorch")


@pytest.mark.parametrize(("dtype", "bf16"), [("fp32", "weights"), ("bf16", "weights"), ("bf16", "autocast")])
def test_every_row_runs_its_own_library_and_the_same_weights_compute_the_same_logits(dtype, bf16):
    config = get_config("vit_ti16", image_size=32, num_classes=10)
    models = build_models(config, ALL)
    x = torch.randn(2, 3, 32, 32)
    calls = {name: 0 for name in models}
    for name, model in models.items():  # hooks travel with the copies each row makes
        model.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    with torch.inference_mode():
        reference = models["vitkit"].eval()(x)
    calls["vitkit"] = 0
    assert reference.std() > 0.1  # a random head: zero logits would make every comparison pass
    for name, model in models.items():
        row = runner(model, "infer", dtype, x, own=name == "vitkit", bf16=bf16)
        row.step()
        assert calls == {n: int(n == name) for n in models}, name
        error = ((row.output() - reference).abs().max() / reference.abs().max()).item()
        calls[name] = 0
        if name in ("vitkit", "timm", "hf"):  # vitkit's weights, through the peer's own loading
            assert error < (1e-5 if dtype == "fp32" else 0.05), name
            assert dtype == "fp32" or error > 1e-4, name  # bf16 really ran, and its rounding shows
        else:  # the peers vitkit cannot give its weights to: their own, and it shows
            assert error > 0.1, name


def test_bench_times_each_library_on_its_own_model():
    calls = {}

    def counted(config, compare):
        models = build_models(config, compare)
        for name, model in models.items():
            calls[name] = 0
            model.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        return models

    r = bench("vit_ti16", 32, 2, "fp32", "infer", ("timm", "torchvision"), repeats=1, iters=3, build=counted)
    timed = 2 + 3 * r["rounds"]  # warm-up, then `iters` per round
    # plus the logits check where the weights are vitkit's, plus vitkit's fp32 reference
    assert calls == {"vitkit": timed + 2, "timm": timed + 1, "torchvision": timed}


@pytest.mark.parametrize(("dtype", "bf16", "product"), [("fp32", "weights", "float32"),
                                                        ("bf16", "weights", "bfloat16"),
                                                        ("bf16", "autocast", "bfloat16")])
def test_the_matmul_peak_is_measured_in_the_benchmarks_dtype_every_round(dtype, bf16, product):
    r = bench("vit_ti16", 32, 2, dtype, "infer", repeats=2, iters=1, bf16=bf16)
    assert r["matmul_peak"]["dtype"] == product
    assert r["rounds"] >= 2
    peak = r["matmul_peak"]["tflops"]
    assert 0 < peak["min"] <= peak["median"] <= peak["max"]


def fixed_peak(dtype, device):
    """A matmul peak that takes no time to measure."""
    return 1e12, "float32"


def test_rounds_interleave_the_rows_and_stop_when_the_spread_stops_growing():
    order = []
    steps = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    scripted = iter([3.0, 2.0, 1.0] + [2.0] * 100)  # first round, then nothing new: stop at `repeats`
    times, peaks, _ = measure(steps, repeats=3, iters=1, peak_dtype=torch.float32, device=torch.device("cpu"),
                              timer=lambda step, iters, device: (step(), next(scripted))[1], peak=fixed_peak)
    rounds = [order[6 + 3 * i: 9 + 3 * i] for i in range(3)]  # after 2 warm-up calls each
    assert rounds == [["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]  # every row once, order rotating
    assert len(peaks) == 3 and all(len(t) == 3 for t in times.values())
    growing = iter(float(i) for i in range(1000))  # every round a new slowest time: go on up to 3x
    times, peaks, _ = measure(steps, repeats=3, iters=1, peak_dtype=torch.float32, device=torch.device("cpu"),
                              timer=lambda step, iters, device: next(growing), peak=fixed_peak)
    assert len(peaks) == 9


def test_a_win_only_beyond_the_spread():
    assert verdict(Spread(11, 12, 13), Spread(8, 9, 10.9)) == "win"
    assert verdict(Spread(11, 12, 13), Spread(8, 9, 11.1)) == "within spread"
    assert verdict(Spread(8, 9, 10), Spread(10.5, 11, 12)) == "loss"


def test_comparisons_pair_the_rows_round_by_round():
    """The machine's speed drifts from round to round (1x, 4x, 2x slower; the peak measured with
    its own drift), and vitkit is 2x, 3x and 0.8x as fast as the peer in the three rounds: the
    round-by-round ratios are those three, in rounds vitkit won 2 of; each row's share of the
    peak is taken against the peak of its own round."""
    slowdown, peer_factor, peaks = [1.0, 4.0, 2.0], [2.0, 3.0, 0.8], [1e12, 0.5e12, 4e12]

    def scripted(steps, repeats, iters, peak_dtype, device):
        times = {key: [s * (1.0 if key.startswith("vitkit") else f)
                       for s, f in zip(slowdown, peer_factor, strict=True)] for key in steps}
        return times, peaks, "float32"

    r = bench("vit_ti16", 32, 2, "fp32", "infer", ("timm",), repeats=1, iters=1, measure=scripted)
    (c,) = r["comparisons"]
    assert c["ratio_of_medians"] == pytest.approx(1.0) and c["verdict"] == "within spread"  # 1 img/s each
    assert c["ratio_by_round"] == pytest.approx({"min": 0.8, "median": 2.0, "max": 3.0}) and c["rounds_won"] == 2
    ours = next(row for row in r["rows"] if row["library"] == "vitkit")
    assert ours["img_per_s_by_round"] == pytest.approx([2.0, 0.5, 1.0])  # batch 2, in round order
    unit = 2 * r["gmacs_per_image"] * 1e9 / 1e12  # FLOPs of 1 img/s against 1 TFLOP/s
    # rounds: 2 img/s at 1 TFLOP/s, 0.5 at 0.5, 1 at 4 (against the median peak: 2, 0.5 and 1 units)
    assert ours["fraction_of_round_peak"] == pytest.approx({"min": 0.25 * unit, "median": unit, "max": 2 * unit})
    # each row's share counts its own library's work: timm runs the last block for every token
    theirs = next(row for row in r["rows"] if row["library"] == "timm")
    assert r["peer_gmacs_per_image"] > 1.05 * r["gmacs_per_image"]
    for row, gmacs in ((ours, r["gmacs_per_image"]), (theirs, r["peer_gmacs_per_image"])):
        rates, flop = row["img_per_s_by_round"], 2 * gmacs * 1e9  # FLOPs per image
        assert row["gflop_per_s"] == pytest.approx(flop * statistics.median(rates) / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(flop * statistics.median(rates) / statistics.median(peaks))
        assert row["fraction_of_round_peak"]["median"] == pytest.approx(
            statistics.median(flop * x / p for x, p in zip(rates, peaks, strict=True)))
    report = "\n".join(report_lines(r))
    assert "round by round 0.80x / 2.00x / 3.00x, faster in 2 of 3" in report
    assert f"(the peers {r['peer_gmacs_per_image']:.2f}: the last block for every token)" in report


def test_bench_compares_modes_and_reports_spreads(capsys, monkeypatch):
    # compiling takes a while on 2 cores, and the compiled paths are tested in tests/model/test_fast.py;
    # here: the rows, comparisons and checks around them
    monkeypatch.setattr(torch, "compile", lambda model, **options: model)
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--compare", "timm",
                 "--repeats", "1", "--compile", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {(row["library"], row["execution"]) for row in r["rows"]} == {
        ("vitkit", "eager"), ("vitkit", "compiled"), ("timm", "eager"), ("timm", "compiled")}
    assert {c["kind"] for c in r["comparisons"]} == {"eager vs eager", "compiled vs compiled", "best vs best"}
    assert all(row["matches_reference"] for row in r["rows"])


@pytest.mark.parametrize("library", ["vitkit", "timm"])
def test_a_training_row_trains_that_librarys_model(library):
    model = build_models(get_config("vit_ti16", image_size=32, depth=2, num_classes=10), ("timm",))[library]
    row = runner(model, "train", "bf16", torch.randn(4, 3, 32, 32), own=library == "vitkit")
    before = row.output()
    row.step()
    assert (row.output() - before).abs().max() > 1e-3


def test_agreement_is_measured_on_the_runs_real_held_out_images(tmp_path, monkeypatch):
    """benchmarks/agreement.py (lab tooling, not the package's): the bench's bf16 path on a trained run."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "benchmarks"))
    from agreement import agreement_on_run

    model = randomize(vitkit.create_model("vit_ti4_28", depth=2, image_size=8, patch_size=2, num_classes=10))
    model.save_pretrained(tmp_path / "run", {"classes": [str(i) for i in range(10)], "data": "digits"})
    a = agreement_on_run(tmp_path / "run", None, images=10_000)
    _, (images, labels), _ = digits()  # the oracle: the 360 held-out digits, scaled as in training
    with torch.no_grad():
        accuracy = (model(images.float() / 127.5 - 1).argmax(1) == labels).float().mean().item()
    assert (a["data"], a["split"], a["images"]) == ("digits", "test", 360)
    assert a["accuracy_fp32"] == pytest.approx(accuracy, abs=1e-6)
    assert 0 < a["max_rel_error"] < a["tolerance"]


def test_a_missing_peer_library_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--compare", "timm"]) == 2
    assert "pip install 'vitkit[peers]'" in capsys.readouterr().err


@pytest.mark.parametrize(("peer", "modules"), [("hf", ("transformers",)), ("vit-pytorch", ("vit_pytorch",))])
def test_other_missing_peers_are_clear_errors(monkeypatch, capsys, peer, modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--compare", peer]) == 2
    assert "pip install 'vitkit[peers]'" in capsys.readouterr().err


def test_an_unknown_peer_names_the_known_ones(capsys):
    assert main(["bench", "--model", "vit_ti16", "--image-size", "32", "--batch", "2", "--compare", "keras"]) == 2
    assert "peers are timm, hf, torchvision, vit-pytorch" in capsys.readouterr().err
