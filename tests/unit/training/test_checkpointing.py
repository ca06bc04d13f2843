"""Distributed checkpoints (nemotron_plugins.training.checkpointing): keep-last-N, re-saving an existing step, the
JSON metadata and ``latest`` on a real 1-rank megatron run; the directory mechanics without megatron."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemotron_plugins.runtime.checkpoint import CRASH_ENV, CheckpointError, crash_point
from nemotron_plugins.runtime.distributed import run_local_processes
from nemotron_plugins.training.checkpointing import (
    ITER_NAMING,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_metadata,
)
from tests.functional.training.checkpoint_worker import retention


def test_keep_last_resave_metadata_on_a_megatron_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker builds its model on CPU: its process must not see a GPU (else it would pick NCCL and CUDA buffers
    # for a CPU model). The spawned child inherits the environment.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    root = tmp_path / "ckpt"
    (seen,) = run_local_processes(retention, 1, (str(root),), timeout_s=300)
    assert seen["lists"] == [[1], [1, 2], [2, 3]]  # keep_last=2 prunes after the commit
    assert seen["latest"] == 3
    assert seen["entries"] == ["iter_0000002", "iter_0000003", "latest"]
    assert seen["after_resave"] == ["iter_0000002", "iter_0000003", "latest"]  # no backup or temp dir left
    assert seen["loaded_state"]["marker"] == "resaved"  # the re-saved copy is the one that loads
    assert seen["digest_equal"]
    meta = seen["metadata"]
    assert meta["step"] == 3 and meta["world_size"] == 1
    assert meta["layout"] == {"tp": 1, "pp": 1, "cp": 1, "dp": 1, "vpp": 1, "world_size": 1}
    assert meta["distrib_optim_sharding_type"] == "fully_reshardable"
    assert seen["latest_text"] == "iter_0000003\n"
    # Readable here, without a process group or torch state.
    assert read_checkpoint_metadata(root / "iter_0000003")["step"] == 3
    assert list_checkpoints(root) == [2, 3] and latest_checkpoint(root) == 3


def _fake_checkpoint(root: Path, step: int, *, suffix: str = "") -> Path:
    path = root / f"{ITER_NAMING.dir_name(step)}{suffix}"
    path.mkdir(parents=True)
    (path / "checkpoint.json").write_text(json.dumps({"step": step}))
    return path


def test_listing_ignores_incomplete_and_falls_back_to_backup(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, 4)
    (tmp_path / "iter_0000005").mkdir()  # no checkpoint.json: incomplete
    (tmp_path / ".tmp_iter_0000006").mkdir()
    assert list_checkpoints(tmp_path) == [4]
    assert latest_checkpoint(tmp_path) == 4  # no latest file yet: the newest complete one
    # A re-save of step 7 interrupted between its renames: only the backup exists, and it counts.
    _fake_checkpoint(tmp_path, 7, suffix=".prev")
    (tmp_path / "latest").write_text("iter_0000007\n")
    assert list_checkpoints(tmp_path) == [4, 7]
    assert latest_checkpoint(tmp_path) == 7
    # latest naming a directory that is gone: warn and use the newest complete one.
    (tmp_path / "latest").write_text("iter_0000009\n")
    assert latest_checkpoint(tmp_path) == 7


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        load_checkpoint(tmp_path, model=[object()])
    _fake_checkpoint(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"iter_0000003 is not a complete checkpoint; available steps: \[2\]"):
        load_checkpoint(tmp_path, model=[object()], step=3)
    with pytest.raises(CheckpointError, match="checkpoint.json does not exist"):
        read_checkpoint_metadata(tmp_path / "iter_0000005")


def test_crash_point_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "somewhere")
    with pytest.raises(ValueError, match="must be one of"):
        crash_point("before_rename", 1)
    monkeypatch.setenv(CRASH_ENV, "before_rename:5")
    crash_point("before_rename", 4)  # another step: nothing happens
    crash_point("after_shards", 5)  # another point: nothing happens
