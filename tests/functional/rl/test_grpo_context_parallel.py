"""GRPO with context parallelism on gloo (SDPA attention, K/V all-gathered over CP, megatron's load-balanced
chunks): one rollout's update at CP2 gives the CP1 log-probs, loss, metrics and updated weights, for a token-level
loss, a sequence-level one (GSPO's sequence ratio with the per-sequence mean) and Dr. GRPO's constant normaliser,
padded or packed (every sequence padded to 2 x CP and cut on its own); TP2 x CP2 and PP2 x CP2 give the single-rank
update; the tiny recipe runs end to end at CP2 with the DP2 rollouts and metrics."""

from __future__ import annotations

import grpo_context_parallel_worker as worker
import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path is what this checks"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]

KEYS = ("loss", "kl", "clip_fraction", "ratio_mean", "pg_loss", "grad_norm", "generator_trainer_logprob_diff")
TOKEN_COUNTS = ("train/real_tokens", "train/padded_over_real_rollout_longest")


def _assert_same(got: dict, want: dict, name: str, *, weights: bool) -> None:
    torch.testing.assert_close(got["before"], want["before"], rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(got["after"], want["after"], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    for key in (*KEYS, *TOKEN_COUNTS):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-5, abs=1e-6), (
            f"{name}: {key} = {got['metrics'][key]} vs CP1 {want['metrics'][key]}"
        )
    if weights:
        assert got["weights"].keys() == want["weights"].keys()
        for key, value in want["weights"].items():
            torch.testing.assert_close(got["weights"][key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: k + m)


def test_cp2_update_equals_cp1() -> None:
    torch.set_num_threads(1)
    # Dr. GRPO's normaliser is a global constant like the token count: padded micro-batches only.
    runs = [
        (f"{name} pack={pack}", ov, pack)
        for name, ov in worker.CASES.items()
        for pack in ((False,) if name == "constant" else (False, True))
    ]
    reference = {name: worker.run_case({}, ov, pack) for name, ov, pack in runs}
    first = reference["token pack=False"]["metrics"]
    assert first["optimizer_steps"] == 2 and first["ratio_mean"] != pytest.approx(1.0, abs=1e-5)
    assert reference["sequence pack=False"]["metrics"]["loss"] != pytest.approx(first["loss"], rel=1e-3)
    # Packed and padded micro-batches compute the same log-probs at CP1 as well.
    torch.testing.assert_close(reference["token pack=True"]["before"], reference["token pack=False"]["before"])

    cp2 = [(name, {"context_parallel_size": 2}, ov, pack) for name, ov, pack in runs]
    per_rank = run_local_processes(worker.layouts_worker, 2, (cp2,), timeout_s=300)
    for name, *_ in cp2:
        for rank, result in enumerate(per_rank):
            _assert_same(result[name], reference[name], f"CP2 {name} rank {rank}", weights=True)


@pytest.mark.slow
def test_tp2_cp2_update_equals_tp1_cp1() -> None:
    """TP2 with sequence parallelism x CP2: each CP rank's share of a sequence is split over TP as well."""
    torch.set_num_threads(1)
    runs = [
        (name, {"tensor_model_parallel_size": 2, "sequence_parallel": True, "context_parallel_size": 2}, ov, False)
        for name, ov in worker.CASES.items()
    ]
    reference = {name: worker.run_case({}, ov, False) for name, _, ov, _ in runs}
    per_rank = run_local_processes(worker.layouts_worker, 4, (runs,), timeout_s=400)
    for name, *_ in runs:
        for rank, result in enumerate(per_rank):
            _assert_same(result[name], reference[name], f"TP2 x CP2 {name} rank {rank}", weights=False)


def test_tiny_grpo_runs_at_cp2_as_at_dp2(tmp_path) -> None:
    """``run_grpo`` end to end at CP2: generation decodes whole sequences with every CP rank a generation replica,
    so it samples the rollouts of the DP2 layout (same replicas, seeds and weights), and the CP2 update equals the
    DP2 one (both are the single-replica update): the two runs' step metrics agree."""
    common = [
        "train_steps=2",
        "cluster.devices_per_node=2",
        "model.seq_length=128",
        "data.max_seq_length=96",
        "generation.max_new_tokens=10",
        "micro_batch_size=2",
        # DAPO's soft overlong penalty: a random policy earns no reward, its lengths still spread the advantages.
        "algorithm.overlong_buffer=8",
        # CP2 cannot share prompts (auto turns it off there): the DP2 reference runs the same padded layout.
        "algorithm.prompt_sharing=off",
    ]
    runs = [
        (str(tmp_path / "cp2"), [*common, "parallel.context_parallel_size=2"]),
        (str(tmp_path / "dp2"), common),
    ]
    per_rank = run_local_processes(worker.tiny_runs, 2, (runs,), timeout_s=400)
    cp2, dp2 = per_rank[0]

    def timeless(runs: list) -> list:
        return [[{k: v for k, v in m.items() if not k.startswith(("time", "tokens_per_s"))} for m in r] for r in runs]

    assert timeless(per_rank[1]) == timeless(per_rank[0])  # every rank reports the same metrics
    assert len(cp2) == len(dp2) == 2
    assert all(step["grad_norm"] > 0 and step["loss"] != 0 for step in cp2)
    for step, (got, want) in enumerate(zip(cp2, dp2, strict=True), start=1):
        for key in ("reward/total", "advantage/std", "response_length/mean", "train/real_tokens", "train/fed_tokens"):
            assert got[key] == want[key], f"step {step}: {key} = {got[key]} at CP2 vs {want[key]} at DP2"
        for key in ("loss", "grad_norm", "kl", "ratio_mean", "clip_fraction"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), f"step {step}: {key}"
    assert (tmp_path / "cp2" / "checkpoints").is_dir()


@pytest.mark.slow
def test_pp2_cp2_update_equals_pp1_cp1() -> None:
    """Two pipeline stages x CP2: every micro-batch padded to the plan's longest (one P2P shape, divided by CP)."""
    torch.set_num_threads(1)
    runs = [
        (f"{name} pack={pack}", {"pipeline_model_parallel_size": 2, "context_parallel_size": 2}, ov, pack)
        for name, ov in list(worker.CASES.items())[:2]
        for pack in (False, True)
    ]
    reference = {name: worker.run_case({}, ov, pack) for name, _, ov, pack in runs}
    per_rank = run_local_processes(worker.layouts_worker, 4, (runs,), timeout_s=400)
    for name, *_ in runs:
        for rank, result in enumerate(per_rank):
            _assert_same(result[name], reference[name], f"PP2 x CP2 {name} rank {rank}", weights=False)
