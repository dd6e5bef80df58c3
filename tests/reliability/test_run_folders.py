"""Nothing in a run folder runs code. A sharded (FSDP) checkpoint's index and its non-tensor
values are pickles that torch.distributed.checkpoint would unpickle as they are: vitkit reads
the index admitting only the checkpoint metadata types, and the values with weights_only on, so
a pickle placed in the run's own shard folder is refused with one line, and nothing runs, on a
plain --resume and on torchrun's restart."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitkit.cli import main
from vitkit.train import checkpoint, trainer
from vitkit.train.checkpoint import MetadataUnpickler
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import start, train

sys.path.insert(0, str(Path(__file__).parents[1]))
from faults import RunsCode

FAST = dict(batch_size=64, workers=0, precision="fp32", epochs=2)
FAULTS = str(Path(__file__).parents[1] / "faults.py")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A run stopped mid-epoch, its checkpoint written as one process's shards."""
    folder = tmp_path_factory.mktemp("run") / "run"
    trainer.STEP_HOOKS.append(stop := lambda run: setattr(run.stop, "requested", run.progress.global_step == 25))
    try:
        with pytest.raises(KeyboardInterrupt):
            train("digits", Recipe(**FAST), set(FAST), out=folder)
    finally:
        trainer.STEP_HOOKS.remove(stop)
    run = start(resume=folder)
    run.parts.sharded = True  # one process writes the FSDP layout: a checkpoint-shards folder and its index
    run.save_checkpoint()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["shards"]
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "run"))


def test_a_sharded_checkpoint_resumes(sharded, tmp_path):
    """The control: the safe reader reads what torch.distributed.checkpoint writes."""
    run = copy_of(sharded, tmp_path)
    expected = start(resume=sharded)
    resumed = start(resume=run)
    for (name, a), b in zip(expected.parts.model.state_dict().items(), resumed.parts.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert resumed.progress.global_step == 25 and train(resume=run)["steps"] == 2 * resumed.plan.steps_per_epoch


def test_a_pickle_in_the_shard_index_is_refused_and_runs_nothing(sharded, tmp_path, capsys):
    run, marker = copy_of(sharded, tmp_path), tmp_path / "ran"
    (index,) = run.glob("checkpoint-shards/*/.metadata")
    index.write_bytes(pickle.dumps(RunsCode(str(marker))))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to resume" in err[0] and "posix.system" in err[0]
    assert not marker.exists()


def test_a_pickle_among_the_shards_values_is_refused_and_runs_nothing(sharded, tmp_path, capsys):
    """The index is genuine; one of the optimizer's values in the shard file is a hostile pickle."""
    run, marker = copy_of(sharded, tmp_path), tmp_path / "ran"
    (index,) = run.glob("checkpoint-shards/*/.metadata")
    with index.open("rb") as f:
        metadata = MetadataUnpickler(f).load()
    key = next(k for k in metadata.storage_data if k.fqn.endswith("param_groups.0.lr"))
    info = metadata.storage_data[key]
    payload = pickle.dumps(RunsCode(str(marker)))
    shard = index.parent / info.relative_path
    info.offset, info.length = shard.stat().st_size, len(payload)
    with shard.open("ab") as f:
        f.write(payload)
    index.write_bytes(pickle.dumps(metadata))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to resume" in err[0] and "could run code" in err[0]
    assert not marker.exists()


def test_the_index_admits_only_checkpoint_types():
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval is not part of a checkpoint's metadata"):
        MetadataUnpickler(__import__("io").BytesIO(pickle.dumps(eval))).load()
    metadata = checkpoint.Metadata(state_dict_metadata={})  # a genuine index passes
    assert isinstance(MetadataUnpickler(__import__("io").BytesIO(pickle.dumps(metadata))).load(), checkpoint.Metadata)


@pytest.mark.slow
def test_torchruns_restart_refuses_a_poisoned_checkpoint_and_runs_nothing(tmp_path):
    """Two FSDP processes; in the first attempt rank 0 poisons the shard index and dies; torchrun
    restarts both, they resume from that checkpoint: both refuse it, and nothing runs."""
    marker = tmp_path / "ran"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", FAULTS, f"poison:0:2:1:{marker}", "train", "digits", "--fsdp", "--epochs", "3",
               "--batch-size", "64", "--workers", "0", "--precision", "fp32", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode != 0
    assert "restart: resuming" in done.stderr and "refusing to resume from" in done.stderr, done.stderr[-3000:]
    assert not marker.exists()
