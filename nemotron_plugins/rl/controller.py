"""The RL controller: the GRPO / RLOO algorithm loop, with no Megatron in it.

The controller owns the data (prompt rows, the curriculum sampler), the rewards, the advantages, the metrics and the
run (checkpoint cadence, resuming, held-out evaluations). It drives two workers through small interfaces:

* a policy worker (:class:`~nemotron_plugins.rl.policy_worker.MegatronPolicyWorker`: ``update(batch, loss_fn)``,
  ``learning_rate()``, ``save`` / ``load`` / ``latest_checkpoint``, ``module`` for a refit) that holds the Megatron
  model, optimizer and scheduler at the training TP / PP / DP layout;
* a generation worker (:class:`~nemotron_plugins.rl.generation.GenerationWorker`: ``generate(prompts, ...)``,
  ``refit(policy)``) that holds the rollout engine at its own :class:`~nemotron_plugins.rl.generation.
  GenerationLayout`.

One step (:func:`train_step`): the sampler's ``num_prompts_per_rollout`` prompts -> ``num_generations`` completions
each (seeded by run seed, step and replica, so a resumed run draws the same samples) -> rewards scored by all ranks
(1/world each, every reward behind a bounded worker pool; failures are NaN, never 0, and past
``max_reward_failure_rate`` the run stops naming the reward) -> the algorithm's ``shape_rewards`` and advantages ->
groups without signal skipped and refilled from extra rollouts (``algorithm.max_refill_rounds``) -> the policy
worker's update on the kept samples -> the generation worker's refit. With ``generation.async_rollouts`` the next
step's rollouts are collected in a background thread during the update, from the weights before it
(:mod:`nemotron_plugins.rl.async_rollout`: one-step off-policy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nemotron_plugins.rl.generation import Samples, all_gather_objects, mix_seed
from nemotron_plugins.rl.policy_worker import pack_policy_batch
from nemotron_plugins.runtime.distributed import barrier, world_rank

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class GRPOResult:
    """What :func:`run_grpo` returns."""

    steps: int
    """Steps completed (including those of a resumed run)."""
    resumed_from: int | None
    """Step the run resumed from (``None``: fresh start)."""
    before: dict[str, float] = field(default_factory=dict)
    """Held-out evaluation before training (empty when resuming or without held-out prompts)."""
    after: dict[str, float] = field(default_factory=dict)
    """Held-out evaluation after training."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step metrics of this process's steps."""
    output_dir: str = ""
    """Run directory."""
    checkpoint_dir: str = ""
    """Checkpoint root."""
    wall_time_s: float = 0.0
    """Wall time of this call."""


# ----------------------------------------------------------------------------------------------------------------
# Data, rewards, policy
# ----------------------------------------------------------------------------------------------------------------


def load_prompt_rows(config: RecipeConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and held-out RL prompt rows of ``config.data`` (the synthetic files must be written already).

    Raises:
        DataSourceError: Naming the field / file / row that is missing or malformed, including a row whose
            ``reward`` column names a reward the recipe does not have.
    """
    from nemotron_plugins.data.sources import check_reward_routing
    from nemotron_plugins.data.sources import load_prompt_rows as read_rows

    train, heldout = read_rows(
        config.data,
        _output_dir(config),
        num_heldout=config.evaluation.num_samples,
        seed=config.seed,
        rewards=config.rewards or [],
    )
    alg = config.algorithm
    if len(train) < alg.num_prompts_per_rollout:
        raise ValueError(
            f"data: {len(train)} training prompts, fewer than one rollout's algorithm.num_prompts_per_rollout = "
            f"{alg.num_prompts_per_rollout}"
        )
    names = [r.name for r in config.rewards or []]
    # Name where the rows came from: a blend's rows carry their source's ``reward`` (data.blend[*].reward).
    if config.data.blend is not None:
        origin = "data.blend"
    elif config.data.dataset == "synthetic_addition":
        origin = "the synthetic task's rl_train.jsonl"
    else:
        origin = "data.path"
    check_reward_routing(train, names, origin)
    check_reward_routing(heldout, names, "data.eval_path")
    return train, heldout


def _output_dir(config: RecipeConfig) -> Path:
    return Path(config.output_dir or os.path.join("runs", config.name))


def build_rewards(config: RecipeConfig) -> dict[str, tuple[float, Any]]:
    """``name -> (weight, Reward)``, every reward bounded in time and memory per sample.

    Each reward goes through :func:`~nemotron_plugins.rewards.pool.bounded_reward`: a pool of ``reward_workers``
    worker processes (default 1) with a hard per-sample kill after ``reward_timeout_s`` seconds (the sample gets
    status ``timeout``); rewards bounded by construction (server-backed judges with deadlines) stay as they are.
    """
    from nemotron_plugins.rewards.base import build_reward
    from nemotron_plugins.rewards.pool import bounded_reward

    workers = config.reward_workers if config.reward_workers is not None else 1
    out: dict[str, tuple[float, Any]] = {}
    for term in config.rewards or []:
        reward = bounded_reward(
            build_reward(term.name, **term.options), workers=workers, timeout_s=config.reward_timeout_s
        )
        out[term.name] = (float(term.weight), reward)
    return out


#: Reward statuses that mean "no verdict" (the sample leaves the advantage computation), as opposed to a score.
FAILED_STATUSES = ("timeout", "error", "unavailable")


@dataclass(kw_only=True, slots=True)
class RewardScores:
    """Scores of a batch of completions, keeping "not applicable" and "failed" apart.

    A reward routed to other rows (``data``'s ``reward`` column) does not apply to a row: its score there is NaN and
    it is not a failure. A reward that applies but gave no verdict (status ``timeout`` / ``error`` /
    ``unavailable``) is a failure: its score is NaN too, ``failed`` marks it, and the sample's ``total`` is NaN so
    it leaves the advantage computation (never scored as 0).
    """

    total: torch.Tensor
    """``[N]`` float64 weighted sum over the rewards that apply; NaN where one of them failed."""
    per: dict[str, torch.Tensor]
    """``name -> [N]`` float64 scores; NaN where the reward does not apply or failed."""
    applies: dict[str, torch.Tensor]
    """``name -> [N]`` bool: the reward scores this row."""
    failed: dict[str, torch.Tensor]
    """``name -> [N]`` bool: the reward applies but gave no verdict."""
    last_error: dict[str, str]
    """``name -> message`` of the last failure in the batch (only rewards that failed)."""

    @property
    def any_failed(self) -> torch.Tensor:
        """``[N]`` bool: some reward failed on the sample."""
        out = torch.zeros(self.total.shape[0], dtype=torch.bool)
        for mask in self.failed.values():
            out |= mask
        return out


def _combine(
    rewards: Mapping[str, tuple[float, Any]],
    per: dict[str, torch.Tensor],
    applies: dict[str, torch.Tensor],
    failed: dict[str, torch.Tensor],
    last_error: dict[str, str],
) -> RewardScores:
    n = next(iter(per.values())).shape[0] if per else 0
    total = torch.zeros(n, dtype=torch.float64)
    for name, (weight, _) in rewards.items():
        total += weight * torch.where(applies[name], per[name], torch.zeros_like(per[name]))
    scores = RewardScores(total=total, per=per, applies=applies, failed=failed, last_error=last_error)
    scores.total = torch.where(scores.any_failed, torch.full_like(total, float("nan")), total)
    return scores


def score_completions(
    rewards: Mapping[str, tuple[float, Any]], texts: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> RewardScores:
    """Score ``texts`` (one per row) with every reward (see :class:`RewardScores`)."""
    from nemotron_plugins.rewards.base import RewardSample

    samples = [
        RewardSample(
            completion=text,
            ground_truth=row["ground_truth"],
            prompt=row["messages"],
            metadata={"reasoning": row.get("reasoning", "on")},
        )
        for text, row in zip(texts, rows, strict=True)
    ]
    per: dict[str, torch.Tensor] = {}
    applies: dict[str, torch.Tensor] = {}
    failed: dict[str, torch.Tensor] = {}
    last_error: dict[str, str] = {}
    routed = {str(row["reward"]) for row in rows if row.get("reward") is not None}
    for name, (_, reward) in rewards.items():
        # A reward named in some rows' ``reward`` column scores only those rows (NaN elsewhere: not applicable);
        # the others (format rewards) score every row.
        applies[name] = torch.tensor(
            [name not in routed or row.get("reward") == name for row in rows], dtype=torch.bool
        )
        scores = torch.full((len(samples),), float("nan"), dtype=torch.float64)
        failed[name] = torch.zeros(len(samples), dtype=torch.bool)
        chosen = applies[name].nonzero().flatten().tolist()
        if chosen:
            for i, result in zip(chosen, reward.score([samples[i] for i in chosen]), strict=True):
                status = getattr(result.status, "value", result.status)
                if status in FAILED_STATUSES or not math.isfinite(float(result.score)):
                    failed[name][i] = True
                    last_error[name] = f"{status}: {result.message or f'score {result.score}'}"
                else:
                    scores[i] = float(result.score)
        per[name] = scores
    return _combine(rewards, per, applies, failed, last_error)


def encode_prompts(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, template: str = "llama-nemotron-super"
) -> list[list[int]]:
    """Prompt token ids rendered with the registered chat ``template`` (``data.chat_template``), with the assistant
    generation header and the tokenizer's own bos token; a row's ``tools`` go into the system turn."""
    from nemotron_plugins.chat.render import render_chat

    bos = getattr(tokenizer, "bos_token", None) or "<|begin_of_text|>"
    return [
        tokenizer(
            render_chat(
                row["messages"], template=template, add_generation_prompt=True, bos_token=bos, tools=row.get("tools")
            ),
            add_special_tokens=False,
        )["input_ids"]
        for row in rows
    ]


def decode_completions(tokenizer: Any, completions: Sequence[Sequence[int]]) -> list[str]:
    """Completion texts without special tokens (EOS / padding)."""
    return tokenizer.batch_decode([list(c) for c in completions], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------------------------


def distributed_score(
    rewards: Mapping[str, tuple[float, Any]],
    texts: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    group: Any = None,
) -> RewardScores:
    """:func:`score_completions` with the work split over the ranks of ``group`` (default: the world; rank r scores
    samples r, r + world, ...) and the scores all-gathered; every rank returns all scores."""
    world, rank = world_rank()
    if group is not None:
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    if world == 1:
        return score_completions(rewards, texts, rows)
    mine = list(range(rank, len(texts), world))
    part = score_completions(rewards, [texts[i] for i in mine], [rows[i] for i in mine]) if mine else None
    local = {
        name: (
            mine,
            part.per[name].tolist() if part else [],
            part.applies[name].tolist() if part else [],
            part.failed[name].tolist() if part else [],
            part.last_error.get(name) if part else None,
        )
        for name in rewards
    }
    per = {name: torch.full((len(texts),), float("nan"), dtype=torch.float64) for name in rewards}
    applies = {name: torch.zeros(len(texts), dtype=torch.bool) for name in rewards}
    failed = {name: torch.zeros(len(texts), dtype=torch.bool) for name in rewards}
    last_error: dict[str, str] = {}
    for gathered in all_gather_objects(local, group):
        for name, (idx, scores, app, fail, error) in gathered.items():
            if idx:
                per[name][idx] = torch.tensor(scores, dtype=torch.float64)
                applies[name][idx] = torch.tensor(app, dtype=torch.bool)
                failed[name][idx] = torch.tensor(fail, dtype=torch.bool)
            if error is not None:
                last_error[name] = error
    return _combine(rewards, per, applies, failed, last_error)


def reward_failure_metrics(scores: RewardScores) -> dict[str, float]:
    """``reward_failures/<name>`` (failed samples) and ``reward_failures/rate`` (samples with any failure)."""
    out = {f"reward_failures/{name}": float(mask.sum()) for name, mask in scores.failed.items()}
    n = scores.total.shape[0]
    out["reward_failures/rate"] = float(scores.any_failed.sum()) / n if n else 0.0
    return out


def check_reward_failures(scores: RewardScores, max_rate: float, where: str) -> None:
    """Stop the run when a reward failed on more than ``max_rate`` of the samples it applies to.

    Raises:
        RewardFailureError: Naming the reward, its failure count and its last error.
    """
    for name, failed in scores.failed.items():
        applicable = int(scores.applies[name].sum())
        count = int(failed.sum())
        if applicable and count / applicable > max_rate:
            raise RewardFailureError(
                f"{where}: reward {name!r} gave no verdict on {count} of {applicable} samples "
                f"({count / applicable:.1%} > max_reward_failure_rate = {max_rate:g}); last error: "
                f"{scores.last_error.get(name, '?')}"
            )


class RewardFailureError(RuntimeError):
    """A reward failed on more samples than ``max_reward_failure_rate`` allows."""


@torch.no_grad()
def evaluate_policy(
    generation: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    rewards: Mapping[str, tuple[float, Any]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    accuracy_reward: str = "math",
    format_reward: str | None = "think_format",
    greedy: bool = True,
    seed: int = 0,
    template: str = "llama-nemotron-super",
    max_reward_failure_rate: float = 1.0,
    replies_path: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Held-out accuracy with one sample per prompt at ``temperature`` and, with ``greedy``, the arg-max decode.

    A sample whose reward gave no verdict (timeout / error / unavailable) is left out of the means and counted in
    ``reward_failures_<label>``; past ``max_reward_failure_rate`` the evaluation stops (:class:`RewardFailureError`).
    With ``replies_path`` every reply is written there (JSON lines, atomically, by global rank 0): the row's index and
    ``id``, the decode (``sampled`` / ``greedy``), the reply text and each reward's score (``null`` where it does not
    apply or gave no verdict), so a run's held-out answers can be read after it.

    Returns:
        ``n``, ``accuracy_sampled``, ``format_sampled``, ``response_length_sampled``, ``reward_failures_sampled``,
        the same ``*_greedy`` keys and, when the rows carry both reasoning modes, ``accuracy_<label>_on`` /
        ``accuracy_<label>_off``.
    """
    if not rows:
        return {}
    prompt_ids = encode_prompts(tokenizer, rows, template=template)
    modes = [("sampled", temperature, top_p)] + ([("greedy", 0.0, 1.0)] if greedy else [])
    result: dict[str, float] = {"n": float(len(rows))}
    reasoning = [str(row.get("reasoning", "on")) for row in rows]
    written: list[dict[str, Any]] = []
    for label, temp, p in modes:
        samples = generation.generate(
            prompt_ids, n=1, temperature=temp, top_p=p, max_new_tokens=max_new_tokens, seed=seed + 17
        )
        texts = decode_completions(tokenizer, samples.completion_ids)
        scores = distributed_score(rewards, texts, rows)
        check_reward_failures(scores, max_reward_failure_rate, f"held-out evaluation ({label})")
        per = scores.per
        if replies_path is not None:
            written.extend(_reply_records(rows, texts, per, label))
        result[f"reward_failures_{label}"] = float(scores.any_failed.sum())
        acc = per[accuracy_reward]
        result[f"accuracy_{label}"] = float(acc.nanmean())
        if format_reward is not None:
            result[f"format_{label}"] = float(per[format_reward].nanmean())
        result[f"response_length_{label}"] = float(sum(map(len, samples.completion_ids)) / len(rows))
        if len(set(reasoning)) > 1:
            for mode in ("on", "off"):
                sel = torch.tensor([m == mode for m in reasoning])
                if sel.any():
                    result[f"accuracy_{label}_{mode}"] = float(acc[sel].nanmean())
    if replies_path is not None and world_rank()[1] == 0:
        from nemotron_plugins.runtime.checkpoint import atomic_write_text

        Path(replies_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(replies_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written))
    return result


def _reply_records(
    rows: Sequence[Mapping[str, Any]], texts: Sequence[str], per: Mapping[str, torch.Tensor], label: str
) -> list[dict[str, Any]]:
    out = []
    for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
        values = {name: float(v[i]) for name, v in per.items()}
        scores = {name: (None if math.isnan(value) else value) for name, value in values.items()}
        out.append({"index": i, "id": row.get("id"), "decode": label, "reply": text, "scores": scores})
    return out


@torch.no_grad()
def estimate_pass_rates(
    generation: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    rewards: Mapping[str, tuple[float, Any]],
    *,
    samples_per_prompt: int,
    accuracy_reward: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    template: str = "llama-nemotron-super",
    max_reward_failure_rate: float = 1.0,
) -> list[float]:
    """Fraction of ``samples_per_prompt`` sampled completions per prompt that its reward scores > 0.5, over the
    samples the reward gave a verdict on. A prompt's reward is the one its row's ``reward`` column names (routed
    data), else ``accuracy_reward``.

    Raises:
        RewardFailureError: A reward failed on more than ``max_reward_failure_rate`` of the samples, or on every
            sample of a prompt (naming the prompt).
    """
    samples = generation.generate(
        encode_prompts(tokenizer, rows, template=template),
        n=samples_per_prompt,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed + 29,
    )
    texts = decode_completions(tokenizer, samples.completion_ids)
    judge = [str(row.get("reward") or accuracy_reward) for row in rows]
    used = {name: rewards[name] for name in dict.fromkeys([accuracy_reward, *judge])}
    scores = distributed_score(used, texts, [rows[i] for i in samples.prompt_index])
    check_reward_failures(scores, max_reward_failure_rate, "curriculum pass-rate estimate")
    acc = torch.tensor(
        [float(scores.per[judge[p]][k]) for k, p in enumerate(samples.prompt_index)], dtype=torch.float64
    ).view(len(rows), samples_per_prompt)
    passed = torch.where(acc.isnan(), acc, (acc > 0.5).double())
    rates = passed.nanmean(1)
    for i, rate in enumerate(rates.tolist()):
        if math.isnan(rate):
            raise RewardFailureError(
                f"curriculum pass-rate estimate: reward {judge[i]!r} gave no verdict on any of the "
                f"{samples_per_prompt} samples of prompt id {rows[i].get('id', i)!r}; last error: "
                f"{scores.last_error.get(judge[i], '?')}"
            )
    return rates.tolist()


# ----------------------------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class RolloutRound:
    """One round of rollouts on ``len(batch)`` prompts, scored, with its advantages and the groups it keeps."""

    batch: list[int]
    """Prompt indices (into the run's rows) of the round."""
    samples: Samples
    """The completions, prompt-major."""
    scores: RewardScores
    """Their reward scores (failures kept apart from "not applicable")."""
    shaped: torch.Tensor
    """``[N]`` rewards after the algorithm's ``shape_rewards`` (NaN where a reward failed)."""
    advantages: Any
    """The algorithm's :class:`~nemotron_plugins.rl.advantages.GroupAdvantages` of ``shaped``."""
    keep_groups: torch.Tensor
    """``[len(batch)]`` bool: the group enters the update."""
    lengths: torch.Tensor
    """``[N]`` completion lengths."""
    finished: torch.Tensor
    """``[N]`` bool: the completion ended (not truncated)."""


def select_groups(
    shaped: torch.Tensor, advantages: Any, group_size: int, *, skip_uniform_groups: bool
) -> torch.Tensor:
    """``[num_groups]`` bool: groups that enter the update.

    A group needs at least 2 samples with a reward (a sample whose reward failed has NaN and is not counted; the
    advantages already leave it out of the group's mean and std); with ``skip_uniform_groups`` its valid rewards
    must also differ.
    """
    valid = torch.isfinite(shaped.view(-1, group_size)).sum(1)
    keep = valid >= 2
    if skip_uniform_groups:
        keep &= ~advantages.zero_std_groups
    return keep


def rollout_round(
    *,
    generation: Any,
    config: RecipeConfig,
    algorithm: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    seed: int,
    timings: dict[str, float],
    score_group: Any = None,
) -> RolloutRound:
    """Generate ``num_generations`` completions for each prompt of ``batch``, score them over ``score_group``
    (default: the world) and compute advantages (adds the rollout / reward seconds to ``timings``)."""
    cfg, gen = config.algorithm, config.generation
    g = cfg.num_generations
    t0 = time.perf_counter()
    samples = generation.generate(
        [prompt_ids[i] for i in batch],
        n=g,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=seed,
    )
    timings["rollout"] += time.perf_counter() - t0
    sample_rows = [rows[batch[i]] for i in samples.prompt_index]
    texts = decode_completions(tokenizer, samples.completion_ids)
    t1 = time.perf_counter()
    scores = distributed_score(rewards, texts, sample_rows, group=score_group)
    timings["reward"] += time.perf_counter() - t1
    lengths = torch.tensor([len(c) for c in samples.completion_ids], dtype=torch.float64)
    finished = torch.tensor(samples.finished, dtype=torch.bool)
    shaped = algorithm.shape_rewards(scores.total, lengths, finished, cfg, max_response_length=gen.max_new_tokens)
    adv = algorithm.advantages(shaped.float().view(len(batch), g), cfg)
    keep = select_groups(shaped, adv, g, skip_uniform_groups=cfg.skip_uniform_groups)
    return RolloutRound(
        batch=list(batch),
        samples=samples,
        scores=scores,
        shaped=shaped,
        advantages=adv,
        keep_groups=keep,
        lengths=lengths,
        finished=finished,
    )


def collect_rounds(
    *,
    step: int,
    generation: Any,
    config: RecipeConfig,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    timings: dict[str, float],
    next_batch: Any | None = None,
    score_group: Any = None,
) -> list[RolloutRound]:
    """The scored rollout rounds of ``step``: one on the prompts ``batch`` (seeded by the run seed and the step) and,
    with ``skip_uniform_groups`` and ``next_batch``, up to ``algorithm.max_refill_rounds`` refills until
    ``num_prompts_per_rollout`` groups have signal (see :func:`train_step`); rewards are scored over ``score_group``
    (default: the world), the rollout / reward seconds added to ``timings``.

    Raises:
        RewardFailureError: A round's rewards failed past ``max_reward_failure_rate``.
    """
    from nemotron_plugins.registry import ALGORITHMS

    cfg = config.algorithm
    common = {
        "generation": generation,
        "config": config,
        "algorithm": ALGORITHMS.get(cfg.algorithm),
        "tokenizer": tokenizer,
        "rows": rows,
        "prompt_ids": prompt_ids,
        "rewards": rewards,
        "timings": timings,
        "score_group": score_group,
    }
    rounds = [rollout_round(batch=batch, seed=mix_seed(config.seed, step), **common)]
    check_reward_failures(rounds[0].scores, config.max_reward_failure_rate, f"step {step + 1}")
    refill_rounds = cfg.max_refill_rounds  # extra rounds allowed; none without skipping or a sampler to draw from
    if not cfg.skip_uniform_groups or next_batch is None:
        refill_rounds = 0
    wanted = cfg.num_prompts_per_rollout
    refill_size = cfg.refill_prompts or wanted  # prompts per refill round (None: a whole sampler batch)
    while len(rounds) <= refill_rounds and sum(int(r.keep_groups.sum()) for r in rounds) < wanted:
        extra_batch = next_batch()[:refill_size]
        extra = rollout_round(batch=extra_batch, seed=mix_seed(config.seed, step, len(rounds)), **common)
        check_reward_failures(extra.scores, config.max_reward_failure_rate, f"step {step + 1} (refill)")
        rounds.append(extra)
    return rounds


def train_step(
    *,
    step: int,
    policy: Any,
    generation: Any,
    config: RecipeConfig,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int] | None,
    rewards: Mapping[str, tuple[float, Any]],
    pass_rates: Sequence[float] | None = None,
    next_batch: Any | None = None,
    rollouts: Any | None = None,
    prefetch_next: bool = False,
) -> dict[str, float]:
    """One rollout + update on the prompts ``batch`` (every rank calls it); returns the step's metrics.

    ``policy`` is the policy worker (``update(batch, loss_fn)``), ``generation`` the generation worker
    (``generate(...)``, ``refit(policy)``); see the module docstring.

    The advantages and the loss come from the registered algorithm ``algorithm.algorithm`` (``ALGORITHMS``), so a
    plugin registered under a new name takes effect. Samples whose reward failed leave the advantages (their group
    is renormalised over the rest; a group left with < 2 scored samples drops out) and the step stops past
    ``max_reward_failure_rate``. With ``skip_uniform_groups``, groups without signal are dropped and, when
    ``next_batch`` (a callable returning the sampler's next prompt indices) is given, up to
    ``algorithm.max_refill_rounds`` extra rollouts refill the update to ``num_prompts_per_rollout`` groups.

    With ``rollouts`` (an :class:`~nemotron_plugins.rl.async_rollout.AsyncRollouts`; ``generation.async_rollouts``)
    the step's rounds come from it (prefetched during the previous step's update, their prompts drawn by its own
    collection; ``batch`` is not used) and, with ``prefetch_next``, step ``step + 1``'s rounds are collected in the
    background while this step's update runs, then joined before the generation engine is refitted."""
    from nemotron_plugins.registry import ALGORITHMS

    cfg = config.algorithm
    algorithm = ALGORITHMS.get(cfg.algorithm)
    g = cfg.num_generations
    wanted = cfg.num_prompts_per_rollout
    t0 = time.perf_counter()
    timings = {"rollout": 0.0, "reward": 0.0}
    async_metrics: dict[str, float] = {}
    if rollouts is None:
        rounds = collect_rounds(
            step=step,
            generation=generation,
            config=config,
            tokenizer=tokenizer,
            rows=rows,
            prompt_ids=prompt_ids,
            batch=batch,
            rewards=rewards,
            timings=timings,
            next_batch=next_batch,
        )
    else:
        taken = rollouts.take(step)
        rounds, timings, async_metrics = taken.rounds, taken.timings, taken.metrics
    batch = rounds[0].batch

    # The update's samples: kept groups in draw order, at most ``wanted`` of them; within a group the samples
    # whose reward failed and those the algorithm masks out are left out.
    prompts, completions, gen_lps, advs = [], [], [], []
    kept_groups = 0
    for r in rounds:
        sample_ok = torch.isfinite(r.shaped) & algorithm.loss_sample_mask(r.finished, cfg)
        flat_adv = r.advantages.flat()
        for grp in r.keep_groups.nonzero().flatten().tolist():
            if kept_groups >= wanted:
                break
            kept_groups += 1
            for i in range(grp * g, (grp + 1) * g):
                if sample_ok[i]:
                    prompts.append(prompt_ids[r.batch[r.samples.prompt_index[i]]])
                    completions.append(r.samples.completion_ids[i])
                    gen_lps.append(r.samples.logprobs[i])
                    advs.append(float(flat_adv[i]))

    lengths = torch.cat([r.lengths for r in rounds])
    total = torch.cat([r.scores.total for r in rounds])
    all_adv = torch.cat([r.advantages.flat() for r in rounds])
    scored = torch.isfinite(torch.cat([r.shaped for r in rounds]))
    zero_std = torch.cat([r.advantages.zero_std_groups for r in rounds])
    finished = torch.cat([r.finished for r in rounds])
    metrics: dict[str, float] = {
        "reward/total": float(total.nanmean()),
        "accuracy": float(torch.cat([r.scores.per[accuracy_reward_name(config)] for r in rounds]).nanmean()),
        "advantage/mean": float(all_adv[scored].mean()) if scored.any() else 0.0,
        "advantage/std": float(all_adv[scored].std()) if scored.sum() > 1 else 0.0,
        "advantage/abs_max": float(all_adv.abs().max()),
        "groups/skipped_fraction": float(zero_std.float().mean()),
        "groups/kept": float(kept_groups),
        "dynamic_sampling/extra_rollouts": float(sum(len(r.batch) * g for r in rounds[1:])),
        "dynamic_sampling/rounds": float(len(rounds) - 1),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated_fraction": float(1.0 - finished.float().mean()),
    }
    for name in rewards:
        metrics[f"reward/{name}"] = float(torch.cat([r.scores.per[name] for r in rounds]).nanmean())
    failures: dict[str, float] = {}
    for r in rounds:
        for key, value in reward_failure_metrics(r.scores).items():
            failures[key] = failures.get(key, 0.0) + (value * len(r.scores.total) if key.endswith("/rate") else value)
    failures["reward_failures/rate"] /= float(len(total))
    metrics.update(failures)
    if pass_rates is not None:
        metrics["curriculum/batch_pass_rate"] = float(sum(pass_rates[i] for i in batch) / len(batch))
    t2 = time.perf_counter()
    if rollouts is not None and prefetch_next:
        rollouts.start(step + 1)  # generates with the engine's weights (before this update) while it runs
    if completions:
        packed = pack_policy_batch(
            prompts,
            completions,
            gen_lps,
            torch.tensor(advs, dtype=torch.float32),
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        metrics.update(policy.update(packed, algorithm.loss))
        metrics["train/sequences"] = float(len(completions))
        metrics["train/tokens"] = float(packed.mask.sum())
    else:
        metrics["train/sequences"] = 0.0
        metrics["train/tokens"] = 0.0
    if rollouts is not None:
        async_metrics["time/async_wait_s"] = rollouts.wait()  # the next step's rollouts are done before the refit
        if completions:
            rollouts.updated()
    if completions:
        generation.refit(policy)
        if rollouts is not None:
            rollouts.refitted()
    metrics.update(async_metrics)
    t_train = time.perf_counter() - t2
    generated = float(lengths.sum())
    metrics["time/rollout_s"] = timings["rollout"]
    metrics["time/reward_s"] = timings["reward"]
    metrics["time/train_s"] = t_train
    metrics["time/step_s"] = time.perf_counter() - t0
    metrics["tokens_per_s/rollout"] = generated / max(timings["rollout"], 1e-9)
    metrics["tokens_per_s/train"] = metrics["train/tokens"] / max(t_train, 1e-9)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def accuracy_reward_name(config: RecipeConfig) -> str:
    """The reward reported as accuracy: ``evaluation.accuracy_reward``, else the first reward."""
    return config.evaluation.accuracy_reward or config.rewards[0].name


def sampler_settings(config: RecipeConfig, num_prompts: int) -> dict[str, Any]:
    """The batch sampler's arguments: ``sampler.*`` for the progressive curriculum over the run's ``train_steps``
    batches (capped by the prompts available for one pass), else a uniform random order."""
    prompts = config.algorithm.num_prompts_per_rollout
    batches = max(1, min(config.train_steps, num_prompts // prompts))
    common = {"global_batch_size": prompts, "num_batches": batches, "seed": config.seed}
    sampler = config.sampler
    if sampler is None or sampler.name == "random":
        return {"name": "random", **common}
    return {
        "name": sampler.name,
        **common,
        "num_bins": sampler.num_bins,
        "center_start": sampler.center_start,
        "center_end": sampler.center_end,
        "width": sampler.width,
        "schedule": sampler.schedule,
        "balance": sampler.balance,
    }


def _build_sampler(config: RecipeConfig, pass_rates: Sequence[float] | None, num_prompts: int) -> Any:
    from nemotron_plugins.curriculum.sampler import ProgressiveGaussianBatchSampler, RandomBatchSampler

    settings = sampler_settings(config, num_prompts)
    name = settings.pop("name")
    if name == "random":
        return RandomBatchSampler(num_prompts, **settings)
    if pass_rates is None:
        raise ValueError("sampler: the progressive curriculum needs pass rates")
    return ProgressiveGaussianBatchSampler(list(pass_rates), **settings)


def _read_pass_rates(path: str, rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Pass rates of ``rows`` from a ``curriculum estimate`` file, matched by the rows' ``id``.

    Raises:
        ValueError: Naming the file and the first prompt id it lacks.
    """
    from nemotron_plugins.curriculum.records import load_pass_rates

    table = load_pass_rates(path)
    by_id = {str(i): float(r) for i, r in zip(table.ids, table.pass_rates, strict=True)}
    out = []
    for row in rows:
        key = str(row["id"])
        if key not in by_id:
            raise ValueError(
                f"sampler.pass_rates_path={path} has no pass rate for prompt id {key!r}; estimate the same prompt file"
            )
        out.append(by_id[key])
    return out


def _drop_easy(config: RecipeConfig, pass_rates: Sequence[float]) -> list[int]:
    """Indices of the prompts the curriculum keeps (``sampler.drop_pass_rate_at_least``)."""
    threshold = config.sampler.drop_pass_rate_at_least if config.sampler is not None else None
    if threshold is None:
        return list(range(len(pass_rates)))
    return [i for i, r in enumerate(pass_rates) if r < threshold]


def _next_batch(sampler: Any) -> list[int]:
    for batch in sampler:
        return list(batch)
    raise RuntimeError("the batch sampler yielded no batch")  # pragma: no cover - a new epoch always has batches


def _fmt(ev: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={int(v) if k == 'n' else format(v, '.4g')}" for k, v in ev.items())


def run_grpo(config: RecipeConfig) -> GRPOResult:
    """Run GRPO / RLOO training end to end (see the module docstring); every rank of a torchrun /
    :func:`~nemotron_plugins.runtime.distributed.run_local_processes` group calls it.

    Args:
        config: The recipe's :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` (task ``grpo`` /
            ``rloo``), read directly.

    Returns:
        A :class:`GRPOResult` with held-out evaluations before / after and the per-step metrics.

    Raises:
        RecipeValidationError: A config the shared validation rejects (before any work).
    """
    from nemotron_plugins.launch.recipe_config import resolve_paths
    from nemotron_plugins.launch.validation import validate_for_run

    if getattr(config, "task", None) not in ("grpo", "rloo"):
        raise ValueError(
            f"run_grpo needs a run config with task 'grpo' or 'rloo', got {getattr(config, 'task', None)!r}"
        )
    resolve_paths(config)
    validate_for_run(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    from nemotron_plugins.runtime.distributed import ensure_distributed

    with ensure_distributed(config.parallel, seed=config.seed):
        return _run(config)


def _run(config: RecipeConfig) -> GRPOResult:  # noqa: PLR0915 - one linear training procedure
    from nemotron_plugins.data.sources import SYNTHETIC, prepare_synthetic_data
    from nemotron_plugins.rl.generation import GenerationWorker
    from nemotron_plugins.rl.policy_worker import MegatronPolicyWorker
    from nemotron_plugins.training.setup import run_metrics_logger

    start = time.perf_counter()
    world, rank = world_rank()
    is_rank0 = rank == 0
    alg, gen, evaluation = config.algorithm, config.generation, config.evaluation

    def say(text: str) -> None:
        if is_rank0:
            print(f"[grpo] {text}", flush=True)

    out = _output_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(config.checkpoint.save_dir or out / "checkpoints")
    load_dir = Path(config.checkpoint.load_dir) if config.checkpoint.load_dir else ckpt_dir
    if config.data.dataset == SYNTHETIC:
        if is_rank0:
            prepare_synthetic_data(config.data, out)
        barrier()
    all_rows, heldout = load_prompt_rows(config)
    policy = MegatronPolicyWorker(config)
    tokenizer = policy.tokenizer
    all_prompt_ids = encode_prompts(tokenizer, all_rows, template=config.data.chat_template)
    longest = max(len(p) for p in all_prompt_ids)
    if longest + gen.max_new_tokens > config.model.seq_length:
        raise ValueError(
            f"a training prompt has {longest} tokens; with generation.max_new_tokens = {gen.max_new_tokens} it "
            f"needs model.seq_length >= {longest + gen.max_new_tokens} (is {config.model.seq_length}); lower "
            "data.max_seq_length or raise model.seq_length"
        )
    generation = GenerationWorker.build(config, policy)
    rewards = build_rewards(config)
    accuracy_reward = accuracy_reward_name(config)
    if is_rank0:
        policy.write_metadata(ckpt_dir)
    p = config.parallel
    say(
        f"{len(all_rows)} training / {len(heldout)} held-out prompts; policy {type(policy.module).__name__} "
        f"({policy.num_parameters():,} parameters on rank 0), world {world} (training TP{p.tensor_model_parallel_size}"
        f" PP{p.pipeline_model_parallel_size} DP{config.data_parallel_size}), engine {gen.engine} "
        f"(generation DP{generation.layout.dp_size})"
    )
    eval_kwargs = {
        "max_new_tokens": evaluation.max_new_tokens or gen.max_new_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "accuracy_reward": accuracy_reward,
        "format_reward": evaluation.format_reward,
        "greedy": evaluation.greedy,
        "seed": config.seed,
        "template": config.data.chat_template,
        "max_reward_failure_rate": config.max_reward_failure_rate,
    }
    resumed = policy.latest_checkpoint(load_dir)
    if resumed is not None and not config.checkpoint.resume:
        raise ValueError(
            f"checkpoint.resume=false but {load_dir} holds checkpoints; delete them or set checkpoint.save_dir elsewhere"
        )
    result = GRPOResult(steps=0, resumed_from=resumed, output_dir=str(out), checkpoint_dir=str(ckpt_dir))
    pass_rates: list[float] | None = None
    curriculum = config.sampler is not None and config.sampler.name != "random"
    rows, prompt_ids = all_rows, all_prompt_ids

    def apply_curriculum_filter(rates: list[float]) -> list[float]:
        nonlocal rows, prompt_ids
        kept = _drop_easy(config, rates)
        if len(kept) < alg.num_prompts_per_rollout:
            raise ValueError(
                f"sampler.drop_pass_rate_at_least={config.sampler.drop_pass_rate_at_least} leaves {len(kept)} of "
                f"{len(rates)} prompts, fewer than one rollout's {alg.num_prompts_per_rollout}"
            )
        rows = [all_rows[i] for i in kept]
        prompt_ids = [all_prompt_ids[i] for i in kept]
        return [rates[i] for i in kept]

    try:
        if resumed is not None:
            # The reference policy stays the initial one (built above); model, optimizer (the distributed
            # optimizer's sharded moments and fp32 main params included), scheduler, RNG and the data position
            # come from the checkpoint, at the saved layout or another one.
            loaded = policy.load(load_dir)
            generation.refit(policy)  # an engine with weights of its own was built from the initial policy
            state = loaded["state"]
            pass_rates = state.get("pass_rates")
            result.before = dict(state.get("before", {}))
            kept_rates = apply_curriculum_filter(pass_rates) if pass_rates is not None else None
            sampler = _build_sampler(config, kept_rates, len(rows))
            sampler.load_state_dict(state["sampler"])
            step = int(loaded["step"])
            say(f"resumed from step {step} ({loaded['path']})")
        else:
            if heldout and evaluation.at_start:
                t = time.perf_counter()
                result.before = evaluate_policy(
                    generation, tokenizer, heldout, rewards, replies_path=out / "eval" / "before.jsonl", **eval_kwargs
                )
                say(f"held-out before ({time.perf_counter() - t:.0f}s): {_fmt(result.before)}")
            kept_rates = None
            if curriculum:
                t = time.perf_counter()
                if config.sampler.pass_rates_path:
                    pass_rates = _read_pass_rates(config.sampler.pass_rates_path, all_rows)
                    origin = config.sampler.pass_rates_path
                else:
                    pass_rates = estimate_pass_rates(
                        generation,
                        tokenizer,
                        all_rows,
                        rewards,
                        samples_per_prompt=config.sampler.pass_rate_responses,
                        accuracy_reward=accuracy_reward,
                        max_new_tokens=gen.max_new_tokens,
                        temperature=gen.temperature,
                        seed=config.seed,
                        template=config.data.chat_template,
                        max_reward_failure_rate=config.max_reward_failure_rate,
                    )
                    origin = f"{config.sampler.pass_rate_responses} samples per prompt"
                kept_rates = apply_curriculum_filter(pass_rates)
                say(
                    f"curriculum: pass rates of {len(all_rows)} prompts ({origin}), mean "
                    f"{sum(pass_rates) / len(pass_rates):.3f}; {len(rows)} kept below "
                    f"{config.sampler.drop_pass_rate_at_least} ({time.perf_counter() - t:.1f}s)"
                )
            sampler = _build_sampler(config, kept_rates, len(rows))
            step = 0
        logging_cfg = config.logging
        metrics_log = run_metrics_logger(
            config,
            resume_step=step,
            progress_keys=[
                "reward/total",
                "accuracy",
                "reward/" + (evaluation.format_reward or accuracy_reward),
                "loss",
            ],
            jsonl_path=out / "metrics.jsonl",
        )

        def save(at: int) -> None:
            policy.save(
                ckpt_dir,
                at,
                state={"pass_rates": pass_rates, "before": result.before, "sampler": sampler.state_dict()},
                keep_last=config.checkpoint.keep_last,
                meta={"recipe": config.name, "task": config.task},
            )

        end_step = config.stop_after_steps or config.train_steps
        interval = config.checkpoint.save_interval

        def saves_at(at: int) -> bool:
            return bool(interval and at % interval == 0) or at == end_step

        rollouts = None
        if gen.async_rollouts:
            from nemotron_plugins.rl.async_rollout import AsyncRollouts

            def collect(at: int, timings: dict[str, float], group: Any) -> list[RolloutRound]:
                return collect_rounds(
                    step=at,
                    generation=generation,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=_next_batch(sampler),
                    rewards=rewards,
                    timings=timings,
                    next_batch=lambda: _next_batch(sampler),
                    score_group=group,
                )

            rollouts = AsyncRollouts(collect)
        with metrics_log:
            while step < end_step:
                batch = _next_batch(sampler) if rollouts is None else None
                metrics = train_step(
                    step=step,
                    policy=policy,
                    generation=generation,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=batch,
                    rewards=rewards,
                    pass_rates=kept_rates,
                    next_batch=lambda: _next_batch(sampler),
                    rollouts=rollouts,
                    # no rollouts in flight at a checkpoint: the step after it collects from the saved weights
                    prefetch_next=not saves_at(step + 1),
                )
                step += 1
                metrics["lr"] = policy.learning_rate()
                if heldout and evaluation.interval and step % evaluation.interval == 0 and step < config.train_steps:
                    ev = evaluate_policy(
                        generation,
                        tokenizer,
                        heldout,
                        rewards,
                        replies_path=out / "eval" / f"step_{step}.jsonl",
                        **eval_kwargs,
                    )
                    metrics.update({f"eval/{k}": v for k, v in ev.items()})
                metrics_log.log(step, metrics)
                if is_rank0 and step % logging_cfg.log_interval == 0 and not logging_cfg.progress_bar:
                    say(f"step {step}/{config.train_steps}: {_fmt({k: metrics[k] for k in metrics if '/' not in k})}")
                result.history.append(metrics)
                if saves_at(step):
                    save(step)
        result.steps = step
        if heldout and step == config.train_steps:
            t = time.perf_counter()
            result.after = evaluate_policy(
                generation, tokenizer, heldout, rewards, replies_path=out / "eval" / "after.jsonl", **eval_kwargs
            )
            say(f"held-out after ({time.perf_counter() - t:.0f}s):  {_fmt(result.after)}")
    finally:
        for _, reward in rewards.values():
            reward.close()
        generation.close()
    result.wall_time_s = time.perf_counter() - start
    if is_rank0:
        _report(result, out)
    return result


def _report(result: GRPOResult, out: Path) -> None:
    (out / "result.json").write_text(
        json.dumps(
            {
                "steps": result.steps,
                "resumed_from": result.resumed_from,
                "before": result.before,
                "after": result.after,
                "wall_time_s": result.wall_time_s,
            },
            indent=2,
        )
    )
    b, a = result.before, result.after
    if b and a:
        print(f"[grpo] held-out accuracy over n={int(a['n'])} prompts (T=1 sampled, one sample each; greedy beside):")
        for key in sorted(k for k in a if k.startswith(("accuracy_", "format_"))):
            print(f"[grpo]   {key:24s} before {b.get(key, float('nan')):.3f}  after {a[key]:.3f}", flush=True)
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program.endswith(".py"):  # ``python -m nemotron_plugins.cli.main``: name the console script instead
        program = "nemotron-plugins"
    command = shlex.join([program, *sys.argv[1:]]) if program else ""
    print(f"[grpo] {result.steps} steps, {result.wall_time_s:.0f}s; output {out}", flush=True)
    if command:
        print(f"[grpo] reproduce: {command}", flush=True)
