"""Distributed checkpoints (nemotron_plugins.training.checkpointing) on real megatron runs over gloo: resume at the
same layout is bit-exact (megatron optimizer and the distributed optimizer at DP2), resume at another layout (TP2 ->
TP1, DP2 distributed optimizer -> DP1) continues with the same loss to float rounding.

Two launches: one 2-process group running five phases (megatron's parallel state rebuilt between them), then one
single process resuming the 2-rank checkpoints at TP1.
"""

from __future__ import annotations

import math

import pytest

from nemotron_plugins.runtime.distributed import run_local_processes
from nemotron_plugins.training.checkpointing import latest_checkpoint, list_checkpoints, read_checkpoint_metadata
from tests.functional.training.checkpoint_worker import phases


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


@pytest.mark.slow
def test_resume_exact_and_resharded(tmp_path) -> None:
    tp2_root, dp2_root = str(tmp_path / "tp2"), str(tmp_path / "dp2_distopt")
    tp2 = {"arch": "tp", "tp": 2}
    dp2 = {"arch": "tp", "dist_opt": True}
    two = run_local_processes(
        phases,
        2,
        (
            [
                # 0: TP2, megatron optimizer: 3 steps, checkpoint after 2 (training continues after the save).
                {**tp2, "steps": 3, "save_at": [2], "root": tp2_root, "rng_probe": True},
                # 1: same layout, other initial weights, resume -> step 2 bit-exact.
                {**tp2, "init_seed": 99, "steps": 1, "load": tp2_root},
                # 2: DP2 with the distributed optimizer: 3 steps, checkpoint after 2.
                {**dp2, "steps": 3, "save_at": [2], "root": dp2_root},
                # 3: same layout, resume -> bit-exact (moments and fp32 main params restored).
                {**dp2, "init_seed": 99, "steps": 1, "load": dp2_root},
                # 4: the TP2 checkpoint at TP1 x DP2 (another layout: RNG re-seeded with a warning).
                {"arch": "tp", "init_seed": 99, "steps": 1, "load": tp2_root, "full_params": True},
            ],
        ),
        timeout_s=600,
    )
    for rank_results in two:
        tp2_run, tp2_resumed, dp2_run, dp2_resumed, tp1dp2 = rank_results
        assert tp2_resumed["loaded"]["step"] == 2 and not tp2_resumed["loaded"]["resharded"]
        assert tp2_resumed["loaded"]["state"] == {"step": 2, "sample": 8}
        assert tp2_resumed["rng_after_load"] == tp2_run["rng_after_save"][2]  # per-rank RNG restored
        assert tp2_resumed["losses"][2] == tp2_run["losses"][2]  # bit-exact
        assert tp2_resumed["digest"] == tp2_run["digest"]  # weights, main params, Adam moments bit-exact
        assert dp2_resumed["losses"][2] == dp2_run["losses"][2]
        assert dp2_resumed["digest"] == dp2_run["digest"]
        assert tp1dp2["loaded"]["resharded"] and tp1dp2["loaded"]["layout"]["tp"] == 2
    assert two[0][0]["digest"] != two[1][0]["digest"]  # TP shards differ: the digests see this rank's shard

    meta = read_checkpoint_metadata(f"{tp2_root}/iter_0000002")
    assert meta["layout"] == {"tp": 2, "pp": 1, "cp": 1, "dp": 1, "vpp": 1, "world_size": 2}
    assert list_checkpoints(tp2_root) == [2] and latest_checkpoint(tp2_root) == 2

    # One process, TP1: the TP2 checkpoint and the DP2 distributed-optimizer checkpoint, resharded.
    (one,) = run_local_processes(
        phases,
        1,
        (
            [
                {"arch": "tp", "init_seed": 99, "steps": 1, "load": tp2_root, "full_params": True},
                {"arch": "tp", "dist_opt": True, "init_seed": 99, "steps": 1, "load": dp2_root},
            ],
        ),
        timeout_s=600,
    )
    tp1, dp1_distopt = one
    assert tp1["loaded"]["resharded"] and dp1_distopt["loaded"]["resharded"]
    reference = two[0][0]["losses"][2]  # the uninterrupted TP2 run's step after the checkpoint
    assert _close(two[0][4]["losses"][2], reference), (two[0][4]["losses"], reference)  # TP1 x DP2
    assert _close(tp1["losses"][2], reference), (tp1["losses"], reference)  # TP1
    dp_reference = two[0][2]["losses"][2]
    assert _close(dp1_distopt["losses"][2], dp_reference), (dp1_distopt["losses"], dp_reference)
    # The resharded weights after that step agree between TP1 x DP2 and TP1 (gathered full tensors).
    for name, value in tp1["params"].items():
        assert abs(value - two[0][4]["params"][name]).max() <= 1e-6, name
