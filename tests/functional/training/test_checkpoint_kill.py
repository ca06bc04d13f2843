"""A process SIGKILLed at every stage of a distributed checkpoint save (after the shards, before the rename, between
the renames of a re-save, before ``latest`` moves, before pruning) leaves ``latest`` naming a complete checkpoint
that loads, and the next save cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.runtime.checkpoint import CRASH_POINTS

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the child forks one process per crash point")
def test_kill_inside_save_keeps_a_loadable_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("NEMOTRON_CHECKPOINT_CRASH_AT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.functional.training.checkpoint_worker", "kill", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {r["point"]: r for r in (json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT "))}
    assert sorted(records) == sorted(CRASH_POINTS)
    for point, r in records.items():
        assert r["killed"], point  # the saver really died by SIGKILL at that stage
        assert r["loaded_step"] == r["latest"], point
        after = r["entries_after_clean_save"]  # the next save removed the leftovers (temp dirs, backups)
        assert "latest" in after and not [e for e in after if e.startswith(".tmp_") or e.endswith(".prev")], after
    # Before the commit rename (and between the renames of a re-save) step 2 is still the newest and loads exactly.
    for point in ("after_shards", "before_rename", "between_renames"):
        assert records[point]["latest"] == 2 and records[point]["loaded_equals_step2"], records[point]
    assert "iter_0000003" not in records["after_shards"]["steps"]
    assert records["between_renames"]["entries"].count("iter_0000002.prev") == 1  # only the backup was left
    # Renamed into place but latest not moved yet: latest still names step 2, step 3 is complete on disk.
    assert records["before_latest"]["latest"] == 2 and 3 in records["before_latest"]["steps"]
    # Committed, killed before pruning: latest names step 3 and it loads.
    assert records["before_prune"]["latest"] == 3 and records["before_prune"]["loaded_step"] == 3
