"""Resumable checkpoints: written atomically, read without unpickling code, portable between
process counts.

Nothing in a run folder can run code: `checkpoint.pt` is read with `torch.load(weights_only=True)`;
a sharded (FSDP) checkpoint's `.metadata` index, which torch.distributed.checkpoint would read
with `pickle.load`, is read by `MetadataUnpickler`, which admits only the checkpoint metadata
types (METADATA_TYPES) and refuses anything else; and its non-tensor values (the optimizer's
hyper-parameters), which torch.distributed.checkpoint would `torch.load` with weights_only off,
are read with it on.

Model and optimizer state are kept keyed by parameter name (torch.distributed.checkpoint's
`get_state_dict`), so a checkpoint written by N processes resumes on M. One process writes
`checkpoint.pt` whole; with FSDP every process writes its shard into a torch.distributed.checkpoint
folder and `checkpoint.pt` names it, so the file that is renamed into place last decides what a
resume sees: a kill at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from vitkit import atomic
from vitkit.distributed import World

FORMAT_VERSION = 3
SHARDS = "checkpoint-shards"  # FSDP: one torch.distributed.checkpoint folder per save
SHARD_NAME = re.compile(r"step-\d+-[0-9a-f]{8}")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
REFUSED = re.compile(r"refusing to resume[^\n]*?start a new run")
# What a torch.distributed.checkpoint `.metadata` file may hold: (module, name) -> allowed. Every
# other global (a function, a class that runs code when built) is refused. dtypes are checked by
# type below, as torch has many.
METADATA_TYPES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
     ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict")}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """temp file + fsync + rename: a kill or a full disk leaves the previous checkpoint intact."""
    with atomic.atomic_path(path) as tmp:
        torch.save({**state, "format_version": FORMAT_VERSION, "rng": rng_state()}, tmp)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; was the run started with this --out?")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything that could run code
        raise ValueError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if saved.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} was written by another vitkit version (format "
                         f"{saved.get('format_version')}, this one reads {FORMAT_VERSION}); start a new run")
    return saved


def save_training(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None,
                  extra: dict[str, Any], step: int, sharded: bool, world: World) -> None:
    """Every process calls this. Unsharded: rank 0 writes one file. Sharded (FSDP): each process
    writes its shard to a new folder; then rank 0 points `checkpoint.pt` at it and deletes the old."""
    if not sharded:
        if world.main:
            model_state, optim_state = get_state_dict(model, optimizer, options=FULL)
            save(path, {**extra, "model": model_state, "optimizer": optim_state,
                        "ema": ema.state_dict() if ema is not None else None})
            shutil.rmtree(path.parent / SHARDS, ignore_errors=True)  # a sharded run resumed unsharded
        return
    tensors = _sharded_tensors(model, optimizer, ema)
    # a new folder every time, never the one checkpoint.pt names (a stop right after an epoch's
    # checkpoint saves the same step again)
    name = f"step-{step}-{world.broadcast(uuid.uuid4().hex[:8])}"
    dcp.save(tensors, checkpoint_id=path.parent / SHARDS / name)  # returns once every shard and the index are written
    if world.main:
        save(path, {**extra, "shards": name})
        for old in (path.parent / SHARDS).iterdir():
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


class MetadataUnpickler(pickle.Unpickler):
    """pickle, admitting only the types of a checkpoint's metadata (METADATA_TYPES, dtypes)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_TYPES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


class Refusal:
    """The first refusal of a checkpoint's reader or planner: torch.distributed.checkpoint wraps
    what they raise in a report of every rank, and the user gets this one line instead."""

    refused: str | None = None

    def refuse(self, message: str) -> None:
        self.refused = self.refused or message
        raise ValueError(message)


class SafeReader(FileSystemReader, Refusal):
    """torch.distributed.checkpoint's file reader, with the metadata read by MetadataUnpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        folder = pathlib.Path(str(path)).parent
        try:
            with self.fs.create_stream(path, "rb") as stream:
                metadata = MetadataUnpickler(stream).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
            self.refuse(f"refusing to resume from {folder}: its .metadata is not a checkpoint index "
                        f"({str(e).splitlines()[0][:200]}); start a new run")
        if not isinstance(metadata, Metadata):
            self.refuse(f"refusing to resume from {folder}: its .metadata holds a {type(metadata).__name__}, "
                        "not a checkpoint index; start a new run")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner, Refusal):
    """The default planner, with non-tensor values read by `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            self.refuse(f"refusing to resume: the checkpoint's {read_item.dest_index.fqn} holds Python objects "
                        f"that could run code ({str(e).splitlines()[0][:200]}); start a new run")
        checked = io.BytesIO()  # what was read, written again: plain values only, for the parent to store
        torch.save(loaded, checked)
        checked.seek(0)
        super().load_bytes(read_item, checked)


def restore_training(path: Path, saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: nn.Module | None) -> None:
    """Load a checkpoint written by any number of processes into this process's model (sharded
    or not): torch.distributed.checkpoint reshards named tensors on load."""
    if "shards" in saved:
        tensors = _sharded_tensors(model, optimizer, ema)
        reader, planner = SafeReader(shard_folder(path, saved["shards"])), SafeLoadPlanner()
        try:
            dcp.load(tensors, storage_reader=reader, planner=planner)
        except (Exception, CheckpointException) as e:  # on every rank, the refusing rank's line in torch's report
            refused = reader.refused or planner.refused or REFUSED.search(str(e))
            if refused:
                raise ValueError(refused if isinstance(refused, str) else refused.group()) from None
            raise
        set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"])
        if ema is not None:
            ema.load_state_dict(tensors["ema"])
        return
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
                   options=options)
    if ema is not None and saved.get("ema") is not None:
        set_model_state_dict(ema, saved["ema"], options=options)


def shard_folder(path: Path, name: Any) -> Path:
    """The run's own shard folder named by `checkpoint.pt`, and nothing else: the reader of
    torch.distributed.checkpoint unpickles the folder's `.metadata`, so a hostile checkpoint.pt
    must not be able to point it at a file elsewhere."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ValueError(f"checkpoint {path} names shards {name!r}, which are not this run's own "
                         f"{SHARDS}/step-N-XXXXXXXX folder; refusing to read them")
    return path.parent / SHARDS / name


def _sharded_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> dict:
    """What torch.distributed.checkpoint saves from, and loads into in place: each process's shards."""
    model_state, optim_state = get_state_dict(model, optimizer)
    tensors = {"model": model_state, "optimizer": optim_state}
    if ema is not None:
        tensors["ema"] = ema.state_dict()
    return tensors


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU; with FSDP a collective (every process calls it, rank 0
    receives them)."""
    return get_model_state_dict(model, options=FULL)
