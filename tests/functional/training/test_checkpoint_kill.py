"""A process SIGKILLed at every stage of a distributed checkpoint save (after the shards, before the rename, between
the renames of a re-save, before ``latest`` moves, before pruning) leaves ``latest`` naming a complete checkpoint
that loads, and the next save cleans up.

One child process per crash point (all started at once): each saves steps 1 and 2 of the same deterministic run,
then dies inside the third save. One more process then inspects and loads every save root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.runtime.checkpoint import CRASH_ENV, CRASH_POINTS
from nemotron_plugins.runtime.distributed import run_local_processes
from tests.functional.training.checkpoint_worker import verify_killed

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_kill_inside_save_keeps_a_loadable_checkpoint(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # five children at once on a small machine
    }
    env.pop(CRASH_ENV, None)
    roots = {point: str(tmp_path / point) for point in CRASH_POINTS}
    logs = {point: open(tmp_path / f"{point}.stderr", "w") for point in CRASH_POINTS}  # noqa: SIM115
    procs = {
        point: subprocess.Popen(
            [sys.executable, "-m", "tests.functional.training.checkpoint_worker", "kill", root, point],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs[
                point
            ],  # a file, not a pipe: megatron's writer Manager outlives the child and keeps pipes open
            start_new_session=True,  # its own process group, reaped below with that Manager
        )
        for point, root in roots.items()
    }
    for point, proc in procs.items():
        proc.wait(timeout=600)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the SIGKILLed saver's orphaned multiprocessing Manager
        logs[point].close()
        err = (tmp_path / f"{point}.stderr").read_text()
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, err[-3000:])  # died at that stage

    (records,) = run_local_processes(verify_killed, 1, (roots,), timeout_s=600)
    for point, r in records.items():
        assert r["loaded_step"] == r["latest"] == r["loaded_state_step"], (point, r)
        after = r["entries_after_clean_save"]  # the next save removed the leftovers (temp dirs, backups)
        assert "latest" in after and not [e for e in after if e.startswith(".tmp_") or e.endswith(".prev")], after
    # Before the commit rename (and between the renames of a re-save) step 2 is still the newest and loads.
    for point in ("after_shards", "before_rename", "between_renames"):
        assert records[point]["latest"] == 2, records[point]
    assert records["after_shards"]["steps"] == [1, 2] and ".tmp_iter_0000003" in records["after_shards"]["entries"]
    assert "iter_0000002.prev" in records["between_renames"]["entries"]  # only the backup of step 2 was there
    assert "iter_0000002" not in records["between_renames"]["entries"]
    # Renamed into place but latest not moved yet: latest still names step 2, step 3 is complete on disk.
    assert records["before_latest"]["latest"] == 2 and records["before_latest"]["steps"] == [1, 2, 3]
    # Committed, killed before pruning: latest names step 3, nothing pruned yet.
    assert records["before_prune"]["latest"] == 3 and records["before_prune"]["steps"] == [1, 2, 3]
    # Every step-2 load gives the same weights (the runs are deterministic), and so does every step-3 load.
    step2 = {records[p]["digest"] for p in ("after_shards", "before_rename", "between_renames", "before_latest")}
    assert len(step2) == 1
