"""Every adapter scores through the worker pool by default; a pool outlives the thread that made it.

Hostile completions (a binomial and a power that take minutes or freeze a process when evaluated, code bait for any
``eval``) go through each adapter with its defaults and through a pool created in a short-lived thread: each gets a
status within the pool's bound, and nothing runs.
"""

from __future__ import annotations

import threading

import pytest

from nemotron_plugins.rewards import adapters
from nemotron_plugins.rewards.adversarial import code_bait
from nemotron_plugins.rewards.base import RewardSample, RewardStatus, build_reward
from nemotron_plugins.rewards.pool import PooledReward, bounded_reward

pytestmark = pytest.mark.timeout(300)

#: (completion, ground truth): the first two are caught by the cheap checks now (before: over 90 s in a thread, a
#: frozen process); the third is a symbolic expansion the cheap checks let through, so only the pool's kill bounds it.
SLOW = [
    ("\\boxed{\\binom{99999999}{49999999}}", "4"),
    ("\\boxed{10^{9999*9999}}", "4"),
    ("\\boxed{(x+1)^{9999}}", "x^{9999}"),
]


def hostile(marker) -> tuple[list[str], list[str]]:
    """Completions and ground truths; the last sample is an ordinary right answer."""
    bait = [(f"<think>x</think>\\boxed{{{b}}}", "4") for b in code_bait(marker)]
    pairs = [*SLOW, *bait, ("<think>ok</think>4", "4")]
    return [c for c, _ in pairs], [g for _, g in pairs]


@pytest.fixture(autouse=True)
def short_pool_bound(monkeypatch):
    """The adapters' default pool, with one worker and a 3 s per-sample bound so the test stays short."""
    monkeypatch.setattr(adapters, "DEFAULT_TIMEOUT_S", 3.0)
    real = adapters.adapter_reward

    def adapter_reward(spec, *, in_process=False, workers=2, timeout_s=3.0):
        reward = real(spec, in_process=in_process, workers=1, timeout_s=3.0)
        made.append(reward)
        return reward

    made: list = []
    monkeypatch.setattr(adapters, "adapter_reward", adapter_reward)
    adapters._cached_reward.cache_clear()
    yield made
    for reward in made:
        reward.close()
    adapters._cached_reward.cache_clear()


def test_bounded_reward_pools_cpu_rewards_and_keeps_server_rewards():
    assert isinstance(bounded_reward(build_reward("math")), PooledReward)
    judge = build_reward("llm_judge")
    assert bounded_reward(judge) is judge
    mixed = bounded_reward(build_reward({"weighted": {"math": 1.0, "llm_judge": 1.0}}))
    assert [type(c).__name__ for c in mixed.children] == ["PooledReward", "LLMJudgeReward"]
    for reward in (mixed,):
        reward.close()


def test_hostile_inputs_through_every_adapter(tmp_path, monkeypatch, short_pool_bound):
    marker = tmp_path / "pwned"
    texts, gts = hostile(marker)
    n = len(texts)

    trl = adapters.make_trl_reward_func("math")
    assert isinstance(trl.reward, PooledReward)
    out = trl(prompts=["q"] * n, completions=texts, ground_truth=gts)
    assert out[:2] == [0.0, 0.0]  # caught by the cheap checks: a wrong answer, scored quickly
    assert out[2] is None, "a timed-out sample is 'no reward' for TRL, never a 0 that reads as a wrong answer"
    assert out[3:-1] == [0.0] * (n - 4) and out[-1] == 1.0
    assert trl.reward.killed == 1

    # Every other adapter pools by default too (workers start lazily, on the first batch) ...
    assert isinstance(adapters.make_verl_compute_score("math").reward, PooledReward)
    assert isinstance(adapters.NemoRLRewardEnvironment("math").reward, PooledReward)
    assert isinstance(adapters.make_openrlhf_reward_func("math").reward, PooledReward)
    # ... and scores the same hostile samples, the one that needs the kill included, through that pool (the warm one
    # from above, to keep the test short): each adapter gets the kill's status in its own form, never a hang.
    pooled = trl.reward
    verl = adapters.make_verl_compute_score(pooled)
    verl_out = [verl("math", t, g) for t, g in zip(texts, gts, strict=True)]
    assert [(d["score"], d["status_ok"]) for d in verl_out] == [(0.0, 1.0)] * 2 + [(0.0, 0.0)] + [(0.0, 1.0)] * (
        n - 4
    ) + [(1.0, 1.0)]
    assert pooled.killed == 2

    queries = ["q " + t for t in texts]
    res = adapters.make_openrlhf_reward_func(pooled)(queries, ["q "] * n, gts)
    assert res["rewards"].tolist() == [0.0] * (n - 1) + [1.0]
    assert res["extra_logs"]["status_ok"].tolist() == [1.0] * 2 + [0.0] + [1.0] * (n - 3)
    assert pooled.killed == 3

    env = adapters.NemoRLRewardEnvironment(pooled)
    ret = env.step([[{"role": "assistant", "content": t}] for t in texts], [{"ground_truth": g} for g in gts])
    assert ret.rewards.tolist() == [0.0] * (n - 1) + [1.0]
    assert ["(timeout)" in o["content"] for o in ret.observations] == [False] * 2 + [True] + [False] * (n - 3)
    assert pooled.killed == 4
    assert pooled.started == pooled.workers + pooled.killed  # every adapter used the one pool: none scored in-process

    monkeypatch.setenv("NEMOTRON_REWARD", "math")
    entry = adapters.reward_func(queries, ["q "] * n, gts)
    assert entry["rewards"].tolist() == [0.0] * (n - 1) + [1.0]
    assert adapters.compute_score("math", texts[0], gts[0]) == {
        "score": 0.0,
        "status_ok": 1.0,
        "extracted": 1.0,
        "boxed": 1.0,
    }
    assert not marker.exists()


def test_pool_made_in_a_short_lived_thread_keeps_its_workers(tmp_path):
    marker = tmp_path / "pwned"
    box: dict = {}

    def make_and_use():
        pool = PooledReward(build_reward("math"), workers=2, timeout_s=3.0)
        box["pool"] = pool
        box["first"] = pool.score([RewardSample(completion="<think></think>4", ground_truth="4")])

    thread = threading.Thread(target=make_and_use)
    thread.start()
    thread.join()
    pool = box["pool"]
    try:
        assert box["first"][0].score == 1.0
        pids = [w.proc.pid for w in pool._pool]
        assert len(pids) == 2
        # The creating thread has exited: the workers must still be alive (PR_SET_PDEATHSIG fires per thread).
        for worker in pool._pool:
            try:
                worker.proc.wait(timeout=1.0)
            except Exception:  # noqa: BLE001 - still running, as it should be
                pass
        assert all(w.proc.poll() is None for w in pool._pool), [w.proc.returncode for w in pool._pool]
        texts, gts = hostile(marker)
        results = pool.score([RewardSample(completion=t, ground_truth=g) for t, g in zip(texts, gts, strict=True)])
        assert [r.status for r in results] == [RewardStatus.OK] * 2 + [RewardStatus.TIMEOUT] + [RewardStatus.OK] * (
            len(texts) - 3
        )
        assert [r.score for r in results if r.ok] == [0.0] * (len(texts) - 2) + [1.0]
        assert not marker.exists()
        # Only replacements for killed workers were started: none died with the thread.
        assert pool.started == 2 + pool.killed
    finally:
        pool.close()


class _HostileGenerator:
    """Completions for curriculum pass-rate estimation: the hostile suite for every prompt."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def generate(self, prompts, n):
        assert n == len(self.texts)
        return [list(self.texts) for _ in prompts]


def test_curriculum_pass_rates_score_through_the_pool(tmp_path):
    import json

    from nemotron_plugins.curriculum.pass_rate import PassRateConfig, estimate_pass_rates

    marker = tmp_path / "pwned"
    texts, gts = hostile(marker)
    # One prompt with ground truth "4"; its k completions are the hostile suite (in process, the expansion ran into
    # math-verify's own timeout and came back as an OK 0, a wrong answer).
    src = tmp_path / "prompts.jsonl"
    src.write_text(json.dumps({"id": "p", "prompt": "q", "ground_truth": "4"}) + "\n")
    config = PassRateConfig(num_samples=len(texts), reward_workers=1, reward_timeout_s=3.0, show_progress=False)
    summary = estimate_pass_rates(src, tmp_path / "out.jsonl", _HostileGenerator(texts), "math", config)
    [row] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # The expansion (x+1)^9999 against "4" is killed at the bound and counted as a reward error, not a pass or a 0;
    # the last completion is the only right answer; no bait ran.
    assert (row["num_passed"], row["num_samples"], row["num_reward_errors"]) == (1, len(texts), 1)
    assert summary.reward_errors == 1
    assert not marker.exists()


def test_curriculum_pass_rate_reward_options_are_checked(tmp_path):
    from nemotron_plugins.curriculum.pass_rate import PassRateConfig
    from nemotron_plugins.curriculum.records import CurriculumInputError

    for bad, field in (({"reward_workers": 0}, "reward_workers"), ({"reward_timeout_s": 0}, "reward_timeout_s")):
        with pytest.raises(CurriculumInputError, match=field):
            PassRateConfig(**bad).validate()


def test_sft_evaluation_scores_answers_through_the_pool(monkeypatch):
    from types import SimpleNamespace

    from nemotron_plugins.rewards import pool as pool_module
    from nemotron_plugins.sft.trainer import _is_correct_for

    made = []

    def recording_bounded_reward(reward, **options):
        made.append(pool_module.PooledReward(reward, **options))
        return made[-1]

    monkeypatch.setattr(pool_module, "bounded_reward", recording_bounded_reward)
    is_correct = _is_correct_for(SimpleNamespace(data=SimpleNamespace(dataset="post_training")))
    try:
        assert [type(r.reward).__name__ for r in made] == ["MathReward"]
        assert is_correct("<think>x</think>\\boxed{4}", 4) and not is_correct("<think>x</think>\\boxed{5}", 4)
        assert made[0].started == 1  # scored in the worker, not in this process
    finally:
        for r in made:
            r.close()
