"""The `vitkit` command. Each sub-command parses its flags here and calls the library.

Errors that are the user's to fix (bad paths, bad flags, bad files) print one line and exit 2;
only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vitkit import runtime
from vitkit.model import PRESETS, ViT, flops
from vitkit.model.normalization import AssumedNormalization
from vitkit.train.outputs import finite
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import TrainingError
from vitkit.weights.hub import PRETRAINED
from vitkit.weights.io import FORMATS

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class UserError(Exception):
    """A problem with the input that the user can fix; shown as one line, exit code 2."""


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = fn
        return fn
    return register


def add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", metavar="COLUMN", help="hfds:/hfids: data: the column holding the images "
                                                             "(default: the Image feature, or one named image/img)")
    p.add_argument("--label-column", metavar="COLUMN", help="hfds:/hfids: data: the column holding the labels "
                                                             "(default: the ClassLabel feature, or one named label)")


def with_columns(args: argparse.Namespace) -> None:
    """--image-column/--label-column become part of the hfds:/hfids: spec, which a run records."""
    columns = {k: getattr(args, f"{k}_column", None) for k in ("image", "label")}
    columns = {k: v for k, v in columns.items() if v}
    if not columns:
        return
    for attr in ("data", "data_pos", "src"):
        spec = getattr(args, attr, None)
        if spec and spec.startswith(("hfds:", "hfids:")):
            setattr(args, attr, spec + ("&" if "?" in spec else "?") + "&".join(f"{k}={v}" for k, v in columns.items()))
            return
    raise UserError("--image-column and --label-column name the columns of hfds: or hfids: data; give "
                    "--data hfds:PATH or hfids:PATH")


def add_revision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", help="for hf-hub:ORG/NAME (or NAME:TAG) weights: the Hub's branch, tag or commit "
                                      "(default: main)")


def add_max_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, metavar="N", help="each image whole at its own aspect ratio, resized so "
                   "that its grid of patches fits N tokens, no crop (NaFlex; default: the run's own budget if it "
                   "trained with one, else the model's fixed size)")


def recorded_budget(run: str) -> int | None:
    """The token budget a run directory records (--max-tokens of its training), or None."""
    from pathlib import Path

    from vitkit.infer import recorded_max_tokens
    from vitkit.model.native import is_native, read_meta

    return recorded_max_tokens(read_meta(run)) if Path(run).is_dir() and is_native(Path(run)) else None


def emit_json(data: object) -> None:
    """Strict JSON: a NaN or infinite number (a diverged run's loss) is null, never printed as NaN."""
    print(json.dumps(finite(data), indent=2, default=str, allow_nan=False))


def finish(args: argparse.Namespace, data: object, text: str) -> int:
    """The command's result: JSON with --json, else one human line."""
    if args.json:
        emit_json(data)
    else:
        print(text)
    return 0


# -- models ------------------------------------------------------------------------------------
def add_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the named models with parameters and GMACs",
                   description="List the named models (the paper's Table 1 and small-image presets) with "
                               "their parameter counts and compute per image: GMACs as usually counted (every "
                               "token through every block), and what model(x) computes (a class-token model's "
                               "last block for the class token alone).")


@command("models")
def run_models(args: argparse.Namespace) -> int:
    rows = []
    for name, config in PRESETS.items():
        with torch.device("meta"):  # count parameters without allocating ViT-H
            params = ViT(config).num_parameters()
        rows.append({"name": name, "image_size": config.image_size, "patch_size": config.patch_size,
                     "dim": config.dim, "depth": config.depth, "heads": config.heads,
                     "mlp_dim": config.mlp_dim, "num_classes": config.num_classes,
                     "params": params, "gmacs": flops(config, every_token=True) / 1e9,
                     "gmacs_logits": flops(config) / 1e9, "weights": list(PRETRAINED.get(name, {}))})
    if args.json:
        emit_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}} {'image':>5} {'patch':>5} {'dim':>5} {'depth':>5} {'heads':>5} "
          f"{'mlp':>5} {'classes':>7} {'params':>9} {'GMACs':>8} {'model(x)':>8}  "
          "weights (NAME:TAG for --init, load, convert)")
    for r in rows:
        print(f"{r['name']:<{width}} {r['image_size']:>5} {r['patch_size']:>5} {r['dim']:>5} "
              f"{r['depth']:>5} {r['heads']:>5} {r['mlp_dim']:>5} {r['num_classes']:>7} "
              f"{r['params'] / 1e6:>8.2f}M {r['gmacs']:>8.2f} {r['gmacs_logits']:>8.2f}  {', '.join(r['weights'])}")
    return 0


# -- train -------------------------------------------------------------------------------------
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a ViT on a data set",
                       description="Train a ViT. With no arguments it trains on scikit-learn's "
                                   "digits. Defaults are chosen for the data set's size and image size.")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help="same as --data")
    p.add_argument("--data", default=None, help="digits (default), mnist:DIR, fashion-mnist:DIR, "
                   "cifar10:DIR, cifar100:DIR, an image folder / .tar.gz of one, wds:DIR (WebDataset shards), "
                   "hfds:PATH (a Hugging Face dataset) or hfids:PATH (one streamed from its files)")
    p.add_argument("--out", help="run directory (default: runs/<data>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a ViTConfig field for a new model (e.g. depth=8), or for --init what the weights do not "
                        "record (heads=12, pool=mean, source_image_size=384); repeatable")
    p.add_argument("--nproc", type=int, help="train with N processes on this machine (launches torchrun; "
                   "--batch-size stays the global batch)")
    add_columns(p)
    for field in dataclasses.fields(Recipe):
        if field.name == "model_overrides":
            continue
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict = {"default": argparse.SUPPRESS, "help": field.metadata["help"]}
        kind = str(field.type)
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("Literal"):
            kwargs["choices"] = typing.get_args(typing.get_type_hints(Recipe)[field.name])
        else:
            kwargs["type"] = float if "float" in kind else int if "int" in kind else str
        p.add_argument(flag, **kwargs)


@command("train")
def run_train(args: argparse.Namespace) -> int:
    from vitkit.train.trainer import train

    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.nproc, args.raw_argv)
    names = {f.name for f in dataclasses.fields(Recipe)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if args.model_option:
        given["model_overrides"] = parse_options(args.model_option)
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    if args.data and args.data_pos and args.data != args.data_pos:
        raise UserError(f"data given twice: {args.data_pos!r} and --data {args.data!r}")
    data = args.data or args.data_pos or "digits"
    if args.resume and (args.data or args.data_pos):
        raise UserError("--resume continues the run's own data; drop --data")
    result = train(data, Recipe(**given), set(given), out=args.out, resume=args.resume,
                   strict=args.strict, device=args.device, progress=args.progress)
    if int(os.environ.get("RANK", "0")):  # under torchrun, rank 0 reports
        return 0
    if args.json:
        emit_json(result)
    else:
        line = f"trained {result['epochs']} epochs in {result['seconds']:.0f} s: validation top-1 " \
               f"{100 * result['val_top1']:.2f}%"
        if "test_top1" in result:
            line += f", test top-1 {100 * result['test_top1']:.2f}%"
        print(line)
        print(f"results in {result['run']} (model, checkpoint, metrics.jsonl, curves.png); next: "
              f"vitkit eval {result['run']}  /  vitkit predict {result['run']} IMAGE")
    return 0


def parse_options(options: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; values are read as JSON where they parse (numbers, true, [224, 320])."""
    parsed: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise UserError(f"--model-option {option!r} is not KEY=VALUE, e.g. --model-option depth=8")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`vitkit train --nproc N ...` = `torchrun --nproc-per-node N -m vitkit train ...`."""
    from torch.distributed.run import main as torchrun

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    try:
        torchrun(["--standalone", "--nproc-per-node", str(nproc), "-m", "vitkit", *rest])
    except Exception as e:  # torchrun's ChildFailedError: a worker's error was already printed
        raise UserError(f"a training process failed: {str(e).splitlines()[0]}") from None
    return 0


# -- shard -------------------------------------------------------------------------------------
def add_shard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="write a data set as WebDataset shards (wds:DIR) for large-scale training",
                       description="Write any data vitkit reads as WebDataset tar shards: "
                                   "DIR/{train,val,test}-NNNNNN.tar (each sample the image's original bytes and its "
                                   "class), classes.json and the index dataset.json (counts per split and class; each "
                                   "shard's samples, size and sha256), written last. A data set without a validation "
                                   "split gets one held out here. Train on the result with `vitkit train wds:DIR`.")
    p.add_argument("src", metavar="SPEC", help="a data spec as for train: an image folder or archive, cifar10:DIR, ...")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--shard-size", default="512MB", help="about this much per shard (default 512MB)")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="fraction held out for validation when the data has no validation split (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="the held-out split and the samples' order")
    add_columns(p)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")


@command("shard")
def run_shard(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vitkit.data import sharding

    size = sharding.parse_size(args.shard_size)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    with tqdm(disable=not show, unit=" images", desc="sharding", file=sys.stderr) as bar:
        result = sharding.write(args.src, Path(args.out), size, args.val_split, args.seed, bar.update)
    return finish(args, result, sharding.describe(result))


# -- eval --------------------------------------------------------------------------------------
def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model on a data set",
                       description="Top-1, top-5, per-class accuracy and loss; writes a confusion "
                                   "matrix PNG beside the run.")
    p.add_argument("run", metavar="RUN", help="a run directory or any save_pretrained directory")
    p.add_argument("--data", help="data spec (default: the run's own data)")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="which split (default: test if the data has one, else val)")
    add_columns(p)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device")
    p.add_argument("--patch-size", type=int, metavar="P", help="evaluate at P x P patches: the patch embedding "
                   "resized by FlexiViT's pseudo-inverse, the position table resampled (default: the model's own)")
    add_max_tokens(p)


@command("eval")
def run_eval(args: argparse.Namespace) -> int:
    from vitkit.infer import evaluate_run

    result = evaluate_run(args.run, data=args.data, split=args.split, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, patch_size=args.patch_size,
                          max_tokens=args.max_tokens)
    if args.json:
        emit_json({k: v for k, v in result.items() if k != "confusion"} | {"confusion": result["confusion"]})
        return 0
    print(f"{result['data']} [{result['split']}]: {result['images']} images  top-1 "
          f"{100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    for name, acc in zip(result["classes"], result["per_class"], strict=True):
        print(f"  {name:<20} {'-' if acc is None else f'{100 * acc:6.2f}%'}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable file(s):")
        for name, reason in result["skipped"]:
            print(f"  {name}: {reason}")
    print(f"confusion matrix: {result['confusion_png']}")
    return 0


# -- predict -----------------------------------------------------------------------------------
def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images",
                       description="Class names and probabilities for each image.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device")
    add_max_tokens(p)


@command("predict")
def run_predict(args: argparse.Namespace) -> int:
    from vitkit.infer import predict

    results = predict(args.run, args.images, topk=args.topk, device=args.device, max_tokens=args.max_tokens)
    if args.json:
        emit_json(results)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['image']}: skipped ({r['error']})")
            continue
        guesses = ", ".join(f"{p['class']} {100 * p['probability']:.1f}%" for p in r["top"])
        print(f"{r['image']}: {guesses}")
    return 0


# -- convert / export --------------------------------------------------------------------------
def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert weights of timm, HF, torchvision, vit-pytorch or JAX to vitkit",
                       description="Read any ViT checkpoint vitkit knows and write it as a vitkit "
                                   "directory (or, with --to, as timm or Hugging Face weights).")
    p.add_argument("src", metavar="SRC", help="a file or directory of weights, or hf-hub:ORG/NAME")
    p.add_argument("--out", required=True, help="output directory (or file for --to timm)")
    p.add_argument("--from", dest="fmt", default="auto", choices=FORMATS, help="source format (default: detect)")
    p.add_argument("--to", default="vitkit", choices=["vitkit", "hf", "timm"], help="output format")
    p.add_argument("--heads", type=int, help="attention heads, for weights that do not record them")
    p.add_argument("--image-size", type=int, help="resample the position embedding to this size")
    p.add_argument("--source-image-size", type=int, help="image size the weights were trained at (vit-pytorch)")
    p.add_argument("--pool", choices=["cls", "mean"], help="pooling, for weights that do not record it")
    p.add_argument("--num-classes", type=int, help="replace the head with a fresh one of this size")
    add_revision(p)


@command("convert")
def run_convert(args: argparse.Namespace) -> int:
    from vitkit.weights import load, save

    options = {k: v for k, v in {"heads": args.heads, "image_size": args.image_size, "pool": args.pool,
                                 "source_image_size": args.source_image_size,
                                 "num_classes": args.num_classes}.items() if v is not None}
    model = load(args.src, format=args.fmt, revision=args.revision, **options)
    path = save(model, args.out, format=args.to)
    info = {"out": str(path), "format": args.to, "config": model.config.to_dict(),
            "params": model.num_parameters(), "revision": model.revision}
    return finish(args, info, f"wrote {path} ({args.to}): {model.num_parameters():,} parameters")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or a torch.export program",
                       description="Export to ONNX (opset 18) or .pt2 (torch.export); the exported "
                                   "program is checked against PyTorch before the file is written.")
    p.add_argument("run", metavar="RUN", help="a run directory, save_pretrained directory or any weights vitkit loads")
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size at run time")
    p.add_argument("--include-normalization", action="store_true",
                   help="put the model's input normalization into the program: it then takes float images scaled to "
                        "[0, 1], (batch, channels, height, width); without it, normalised images")
    p.add_argument("--normalize", help="the normalization to include instead of the weights' own: imagenet, half, "
                                       "none, MEAN,STD or M1,M2,M3,S1,S2,S3")
    p.add_argument("--max-tokens", type=int, metavar="N", help="a program for images of any height and width in "
                   "whole patches, resized so that their grid fits N tokens (default: the run's own budget, if any)")
    add_revision(p)


@command("export")
def run_export(args: argparse.Namespace) -> int:
    from vitkit.weights import load
    from vitkit.weights.export import export

    if args.normalize and not args.include_normalization:
        raise UserError("--normalize sets the normalization that --include-normalization puts into the program; "
                        "add --include-normalization")
    model = load(args.run, normalize=args.normalize, revision=args.revision)
    tokens = recorded_budget(args.run) if args.max_tokens is None else args.max_tokens
    result = export(model, args.out, args.format, args.dynamic_batch, include_normalization=args.include_normalization,
                    max_tokens=tokens)
    taking = "; it takes images in [0, 1] (normalization " + model.normalization.describe() + " included)" \
        if args.include_normalization else ""
    return finish(args, result, f"wrote {result['file']} ({args.format}); matches PyTorch on batches "
                                f"{result['checked_batches']} within {result['max_rel_error']:.1e}{taking}")


# -- embed / fewshot ---------------------------------------------------------------------------
def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write a model's features of a data set (.npy or .safetensors)",
                       description="Write the frozen features of every image of a data set, for retrieval and "
                                   "probing: the pooled pre-logits representation (the input of the head), and with "
                                   "--layer N also block N's tokens. Images go through the model's own resize and "
                                   "input normalization. FILE.safetensors holds 'features' (images, dim), 'labels' "
                                   "(images,) and 'tokens' (images, tokens, dim), with the class names in its "
                                   "metadata. FILE.npy holds the features; the labels go beside it in "
                                   "<FILE stem>.labels.npy and the tokens in <FILE stem>.tokens.npy (emb.npy: "
                                   "emb.labels.npy, emb.tokens.npy). Unreadable images are left out (and listed).")
    p.add_argument("run", metavar="WEIGHTS|RUN", help="a run directory or any weights vitkit.load reads")
    p.add_argument("data", metavar="DATA", help="a data spec: digits, cifar10:DIR, an image folder, ...")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.npy or FILE.safetensors")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="which split (default: train; an image folder without split folders: all its images)")
    p.add_argument("--layer", type=int, metavar="N",
                   help="also write block N's tokens (prefix tokens first; negative N counts from the end)")
    p.add_argument("--layer-norm", action="store_true", help="pass block N's tokens through the final LayerNorm")
    p.add_argument("--maps", action="store_true", help="write block N's patch tokens as feature maps (images, dim, "
                   "rows, cols), for a detection or segmentation head, instead of tokens")
    add_columns(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device")
    add_revision(p)


@command("embed")
def run_embed(args: argparse.Namespace) -> int:
    from vitkit.probe import features

    if (args.layer_norm or args.maps) and args.layer is None:
        flag = "--layer-norm" if args.layer_norm else "--maps"
        raise UserError(f"{flag} applies to the tokens of --layer N; add --layer N")
    features.check_out(args.out)  # before the work, not after it
    model = features.open_model(args.run, runtime.device(args.device), args.revision)
    images, classes, split = features.images_of(args.data, args.split, model.config.in_channels)
    found = features.extract(model, images, args.layer, args.layer_norm, args.batch_size, args.workers)
    if args.maps:
        found.tokens = features.as_maps(found.tokens, model.config.num_prefix_tokens, model.config.grid)
    meta = {"model": str(args.run), "data": args.data, "split": split, "classes": json.dumps(classes),
            "normalization": json.dumps(model.normalization.to_dict() if model.normalization else None),
            "layer": "" if args.layer is None else str(args.layer),
            "prefix_tokens": str(model.config.num_prefix_tokens)}
    files = features.write(found, args.out, meta)
    info = {"files": files, "images": len(found.labels), "feature_dim": found.pooled.shape[1],
            "tokens_shape": None if found.tokens is None else list(found.tokens.shape), "classes": classes,
            "split": split, "skipped": [list(s) for s in found.skipped]}
    text = f"wrote {', '.join(files)}: {len(found.labels)} images of {args.data} [{split}], " \
           f"{found.pooled.shape[1]}-d features" + ("" if found.tokens is None else
                                                   f" and block {args.layer}'s tokens {list(found.tokens.shape)}")
    if found.skipped:
        text += f"; skipped {len(found.skipped)} unreadable file(s)"
    return finish(args, info, text)


def add_fewshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fewshot", help="few-shot linear evaluation of frozen features (the paper's section 4.1)",
                       description="The paper's few-shot linear evaluation: for k = each of --shots, k training "
                                   "images per class are drawn (seeded) from the data's train split, a regularised "
                                   "least-squares map from their frozen pre-logits features (whitened) to {-1, 1} "
                                   "targets is solved in closed form, and it is scored on the test split (val when "
                                   "there is none); the accuracy is averaged over --seeds draws.")
    p.add_argument("run", metavar="WEIGHTS|RUN", help="a run directory or any weights vitkit.load reads")
    p.add_argument("--data", help="data spec (default: the run's own data)")
    p.add_argument("--shots", default="1,5,10,25",
                   help="training images per class, comma-separated (default 1,5,10,25)")
    p.add_argument("--l2", type=float, default=2.0**10, metavar="LAMBDA",
                   help="L2 regularisation of the least-squares map (default 1024, big_vision's)")
    p.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="draws of the training images to average (default 3)")
    add_columns(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device")
    add_revision(p)


@command("fewshot")
def run_fewshot(args: argparse.Namespace) -> int:
    from vitkit.probe.fewshot import fewshot, report_lines

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--shots {args.shots!r} is not a comma-separated list of numbers, e.g. 1,5,10,25") from None
    result = fewshot(args.run, args.data, shots, args.l2, args.seeds, args.device, args.batch_size, args.workers,
                     args.revision)
    return finish(args, result, "\n".join(report_lines(result)))


# -- explain / inspect -------------------------------------------------------------------------
def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attention maps over images (the paper's Figure 6)",
                       description="For each image, a PNG with the image, an attention map over it "
                                   "and the top-3 classes.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", help="folder for the PNGs (default: RUN/explain)")
    p.add_argument("--method", choices=["rollout", "last-layer", "grad-rollout"], default="rollout",
                   help="attention rollout (default), the last block's heads, or gradient-weighted rollout")
    p.add_argument("--class", dest="target", help="class to explain with grad-rollout (default: the predicted one)")
    add_max_tokens(p)


@command("explain")
def run_explain(args: argparse.Namespace) -> int:
    from vitkit.explain.report import explain

    results = explain(args.run, args.images, args.out, args.method, args.target, args.max_tokens)
    if args.json:
        emit_json(results)
        return 0
    for r in results:
        print(f"{r['image']}: " + (f"skipped ({r['error']})" if "error" in r else r["png"]))
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="the paper's Figure 7 for a model",
                       description="Embedding filters' principal components, position-embedding "
                                   "similarity, and mean attention distance against depth.")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--data", help="data spec for the attention distances (default: the run's)")
    p.add_argument("--out", help="folder for inspect.png (default: RUN)")
    p.add_argument("--images", type=int, default=64, help="images to average attention distance over")
    add_columns(p)


@command("inspect")
def run_inspect(args: argparse.Namespace) -> int:
    from vitkit.explain.report import inspect

    result = inspect(args.run, args.data, args.out, args.images)
    return finish(args, result, f"wrote {result['png']} (attention distances over {result['images']} images)")


# -- bench -------------------------------------------------------------------------------------
def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="images/s against peers and the machine's matmul peak",
                       description="Time vitkit and its peers on the same model in one process: "
                                   "images/s, latency, GFLOP/s and the fraction of a measured matmul peak.")
    p.add_argument("--model", default="vit_s16")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--compare", default="", help="comma-separated: timm,hf,torchvision,vit-pytorch")
    p.add_argument("--repeats", type=int, default=7, help="rounds at least (up to 3x, until the spread is known)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device")
    p.add_argument("--compile", action="store_true", help="also time every library under torch.compile (with "
                   "freezing for inference); the compile time is not timed")
    p.add_argument("--bf16", choices=["weights", "autocast"], default="weights",
                   help="how every library runs bf16 inference: weights cast once, or fp32 weights under autocast")


@command("bench")
def run_bench(args: argparse.Namespace) -> int:
    from vitkit.bench import bench, report_lines

    if args.threads:
        torch.set_num_threads(args.threads)
    compare = tuple(c for c in args.compare.split(",") if c)
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    r = bench(args.model, args.image_size, args.batch, args.dtype, args.mode, compare, args.repeats,
              device=args.device, compile=args.compile, bf16=args.bf16)
    return finish(args, r, "\n".join(report_lines(r)))


# -- serve -------------------------------------------------------------------------------------
def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: a JSON API and a web page",
                       description="POST /predict, POST /explain, GET / (a page to drop images on), GET /info, "
                                   "GET /health. Requests that arrive together are classified in one batch.")
    p.add_argument("run", metavar="RUN|WEIGHTS", help="a run directory or any weights vitkit.load reads")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed at start)")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="weights of the fast path (auto: bf16 where the CPU/GPU runs it fast)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path (compiled before serving)")
    p.add_argument("--max-batch", type=int, default=32, help="most images in one forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch's first image waits for others to arrive")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="larger requests get 413")
    p.add_argument("--decode-threads", type=int, default=2, help="threads decoding uploaded images")
    p.add_argument("--max-image-mpx", type=float, default=40.0,
                   help="decoded megapixels an image may have (larger ones get 413 from their header, undecoded)")
    p.add_argument("--max-request-mpx", type=float, default=120.0, help="the same for all images of one request")
    p.add_argument("--max-pending", type=int, default=256,
                   help="requests in the server at once; more get 503 before their bodies are read")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request body must arrive within this (408 after)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a name the server may be reached at besides its address (repeatable); with --host 0.0.0.0, "
                        "once one is given, requests under any other name get 400")
    p.add_argument("--docs", action="store_true", help="serve the API schema (/openapi.json and /docs)")
    add_max_tokens(p)
    add_revision(p)


@command("serve")
def run_serve(args: argparse.Namespace) -> int:
    from vitkit.serve import require_serve_extra

    require_serve_extra()
    from vitkit.serve import app

    settings = app.Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb,
                            decode_threads=args.decode_threads, max_image_mpx=args.max_image_mpx,
                            max_request_mpx=args.max_request_mpx, max_pending=args.max_pending,
                            body_timeout_s=args.body_timeout, allow_hosts=tuple(args.allow_host), docs=args.docs)
    settings.check()
    engine = app.load_engine(args.run, args.device, args.dtype, args.compile, args.revision, args.max_tokens)
    sock = app.listen(args.host, args.port)
    started = {"url": app.url(sock), "port": sock.getsockname()[1], "classes": len(engine.classes),
               "dtype": engine.dtype, "device": str(engine.device)}
    if args.json:
        print(json.dumps(started), flush=True)
    else:
        print(f"serving {args.run} ({started['classes']} classes, {engine.dtype} on {engine.device}) at "
              f"{started['url']}  (Ctrl-C stops)", flush=True)
    app.run(engine, settings, sock, log_level="info" if args.verbose else "warning")
    return 0


# -- entry point -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers: build, train, evaluate, explain, export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    for p in [parser, *sub.choices.values()]:
        p.add_argument("-v", "--verbose", action="store_true", help="more log output")
    for p in sub.choices.values():  # every command can answer in JSON
        p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    return parser


ADDERS = [add_models, add_train, add_shard, add_eval, add_predict, add_convert, add_export, add_embed, add_fewshot,
          add_explain, add_inspect, add_bench, add_serve]


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """vitkit's own warnings as one line each, as its log says them; others as Python shows them."""
    if issubclass(category, AssumedNormalization):
        logging.getLogger("vitkit").warning("%s", message)
    else:
        warnings._showwarning_orig(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.raw_argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # other libraries: warnings only
    logging.getLogger("vitkit").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    warnings.showwarning = show_warning
    if args.command is None:
        parser.print_help()
        return 2
    runtime.keep_freed_memory()  # every command runs tensors through the allocator, step after step
    try:
        with_columns(args)
        return COMMANDS[args.command](args)
    except (UserError, TrainingError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process stops; one says so
            print(f"vitkit {args.command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
