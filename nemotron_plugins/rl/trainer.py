"""The GRPO / RLOO training loop on megatron-core: curriculum sampler -> rollouts -> rewards -> advantages -> update.

The policy is the Puzzle ``GPTModel`` (:func:`nemotron_plugins.puzzle.model.build_puzzle_model`) wrapped in
megatron-core's ``DistributedDataParallel`` with megatron's optimizer, at any TP / PP / DP layout that
:func:`nemotron_plugins.runtime.distributed.init_distributed` builds (gloo on CPU, NCCL on GPU). One step of
:func:`run_grpo`:

1. the batch sampler (the progressive-Gaussian curriculum over estimated pass rates, or uniform) hands out
   ``num_prompts_per_rollout`` prompt indices, the same on every rank;
2. rollouts: each data-parallel replica samples ``num_generations`` completions for its share of the prompts with
   the rollout engine (``megatron``: megatron-core's static KV cache on the policy itself; every TP rank of a replica
   draws the same tokens from the same seed), seeded per step and replica so a resumed run draws the same samples;
   the replicas' rollouts are all-gathered;
3. rewards: every rank scores a 1/world slice of the samples, each reward in a pool of worker processes with a hard
   per-sample time bound (``reward_workers``, ``reward_timeout_s``); the scores are all-gathered; the weighted sum
   is the reward. A sample whose reward gave no verdict (timeout / error / unavailable) is NaN, not 0: it leaves
   the advantages and the update, is counted in ``reward_failures/*``, and past ``max_reward_failure_rate`` the
   run stops naming the reward and its last error (a reward routed to other rows is "not applicable", not a
   failure);
4. group-relative advantages (:mod:`nemotron_plugins.rl.advantages`); groups whose rewards are all equal carry no
   signal and are skipped (``skip_uniform_groups``), and up to ``algorithm.max_refill_rounds`` extra rollouts on
   the sampler's next prompts refill the update to ``num_prompts_per_rollout`` groups (dynamic sampling);
5. update: the kept samples are split into ``updates_per_rollout / epochs_per_rollout`` global batches, run once
   per epoch (the LR schedule of ``optimizer`` advances once per optimizer step); each global batch is
   split over the data-parallel replicas and run through megatron's ``forward_backward_func`` (1F1B pipelining when
   PP > 1) with the clipped loss (:func:`nemotron_plugins.rl.loss.compute_policy_loss`, token-level mean over the
   GLOBAL batch: each micro-batch's loss is already divided by the global token count, so
   ``calculate_per_token_loss`` keeps megatron from rescaling and DDP sums the replicas' gradients);
   ``finalize_model_grads`` reduces the gradients (DP, sequence-parallel norms, tied embeddings) and megatron's
   optimizer clips and steps. Log-probs come from vocab-parallel cross entropy on the logits of the real vocabulary
   (megatron's padding ids masked), at the sampling temperature;
6. weight sync: the ``megatron`` engine samples from the trained module itself (nothing to copy); other engines get
   :meth:`~nemotron_plugins.rl.engines.base.RolloutEngine.update_weights` after every step;
7. metrics (rewards per component, accuracy, advantage stats, KL, clip fraction, response length, tokens/s) go to the
   console (progress bar), a JSONL file and TensorBoard / W&B when configured; an atomic checkpoint (every rank its
   shard) holds the model, optimizer, sampler position, pass rates and RNG, so a killed run resumes exactly.

The run reads the recipe's :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` directly (``algorithm``,
``generation``, ``rewards``, ``sampler``, ``evaluation``, ``data``...): there is no second RL schema. The model,
optimizer and LR scheduler come from the shared training stack (:mod:`nemotron_plugins.training`).

Public API::

    run_grpo(config: RecipeConfig) -> GRPOResult
    policy_update(model, optimizer, batch, config) -> dict   # one rollout's gradient updates (any TP / PP / DP)
    evaluate_policy(engine, tokenizer, rows, rewards, ...) -> dict   # held-out accuracy, sampled and greedy
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

from nemotron_plugins.runtime.distributed import barrier

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig

logger = logging.getLogger(__name__)

EMBEDDED_ENGINES = ("megatron", "embedded")
TRAINER_ENGINES = (*EMBEDDED_ENGINES, "vllm")


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

    train, heldout = read_rows(config.data, _output_dir(config), num_heldout=config.evaluation.num_samples)
    alg = config.algorithm
    if len(train) < alg.num_prompts_per_rollout:
        raise ValueError(
            f"data: {len(train)} training prompts, fewer than one rollout's algorithm.num_prompts_per_rollout = "
            f"{alg.num_prompts_per_rollout}"
        )
    names = [r.name for r in config.rewards or []]
    check_reward_routing(train, names, "data.path")
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
    generation header and the tokenizer's own bos token."""
    from nemotron_plugins.chat.render import render_chat

    bos = getattr(tokenizer, "bos_token", None) or "<|begin_of_text|>"
    return [
        tokenizer(
            render_chat(row["messages"], template=template, add_generation_prompt=True, bos_token=bos),
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


def _layout() -> tuple[int, int, int, int]:
    """``(world, rank, dp, dp_rank)`` from megatron's ``parallel_state``."""
    from megatron.core import parallel_state as ps

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return world, rank, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()


def _all_gather(obj: Any, group: Any = None) -> list[Any]:
    """``obj`` of every rank of ``group`` (default: the world), in rank order; ``[obj]`` without a group."""
    if not torch.distributed.is_initialized():
        return [obj]
    size = torch.distributed.get_world_size(group)
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


def _mix_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 7919) % (2**62)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Policy, optimizer, engine
# ----------------------------------------------------------------------------------------------------------------


def build_policy(config: RecipeConfig) -> tuple[Any, Any, Any]:
    """This rank's policy ``GPTModel`` (with its starting weights), its ``PuzzleModelConfig`` and the tokenizer, all
    through the shared training stack (:mod:`nemotron_plugins.training.setup`)."""
    from nemotron_plugins.training.setup import build_model, initialise_weights, load_architecture, load_run_tokenizer

    tokenizer = load_run_tokenizer(config)
    model_config = load_architecture(config)
    if model_config.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {model_config.vocab_size} < tokenizer size {len(tokenizer)}")
    model = build_model(config, model_config)
    source = initialise_weights(config, model, model_config)
    logger.info("policy weights: %s", source)
    return model, model_config, tokenizer


def engine_settings(config: RecipeConfig, tokenizer_size: int | None = None) -> dict[str, Any]:
    """What the rollout engine is built with, from ``config.generation``."""
    gen = config.generation
    if gen.engine == "megatron":
        return {"engine": "megatron", "max_batch_size": gen.batch_size, "vocab_size": tokenizer_size}
    llm_kwargs: dict[str, Any] = {}
    if gen.max_num_seqs is not None:
        llm_kwargs["max_num_seqs"] = gen.max_num_seqs
    if gen.kv_cache_dtype != "auto":
        llm_kwargs["kv_cache_dtype"] = {"fp8": "fp8", "bfloat16": "auto", "float16": "auto", "float32": "auto"}[
            gen.kv_cache_dtype
        ]
    return {
        "engine": "vllm",
        "tensor_parallel_size": gen.tensor_model_parallel_size,
        "gpu_memory_utilization": gen.gpu_memory_utilization,
        "dtype": config.model.params_dtype,
        "fp8": gen.fp8,
        "max_model_len": config.model.seq_length,
        "seed": config.seed,
        "llm_kwargs": llm_kwargs,
    }


def build_engine(config: RecipeConfig, model: Any, model_config: Any, tokenizer: Any) -> Any:
    """The rollout engine of ``config.generation.engine`` for this rank's policy ``model`` (unwrapped)."""
    settings = engine_settings(config, len(tokenizer))
    if settings.pop("engine") == "megatron":
        from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine

        return MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(**settings))
    # vLLM colocated with training: an HF export of the initial policy to start from, refreshed after every step.
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint
    from nemotron_plugins.rl.engines.vllm_engine import VLLMEngineConfig, VLLMRolloutEngine

    path = _output_dir(config) / "hf_policy"
    export_hf_checkpoint(model, model_config, path)
    if _layout()[1] == 0:
        tokenizer.save_pretrained(str(path))
    barrier()
    return VLLMRolloutEngine(
        VLLMEngineConfig(model_path=str(path), **settings), tokenizer=tokenizer, puzzle_config=model_config
    )


# ----------------------------------------------------------------------------------------------------------------
# Rollouts, scoring and evaluation (data parallel)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Samples:
    """Completions of a list of prompts, prompt-major (``n`` consecutive entries per prompt)."""

    prompt_index: list[int]
    """Index of each completion's prompt in the list given to :func:`distributed_rollout`."""
    completion_ids: list[list[int]]
    """Sampled token ids (end-of-sequence token included when sampled)."""
    logprobs: list[list[float]]
    """The engine's sampling log-prob of each token."""
    finished: list[bool]
    """Whether the completion ended (eos / stop string) rather than hitting the length limit."""


def distributed_rollout(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> Samples:
    """Sample ``n`` completions per prompt: each data-parallel replica takes a contiguous share of the prompts
    (seeded by ``seed`` and its DP rank), then the shares are all-gathered, so every rank returns all samples."""
    from megatron.core import parallel_state as ps

    _, _, dp, dp_rank = _layout()
    lo, hi = len(prompts) * dp_rank // dp, len(prompts) * (dp_rank + 1) // dp
    local = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    if hi > lo:
        groups = engine.rollout(
            [list(p) for p in prompts[lo:hi]],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=_mix_seed(seed, dp_rank),
        )
        for group in groups:
            for r in group.rollouts:
                local.prompt_index.append(lo + group.prompt_index)
                local.completion_ids.append(list(r.completion_ids or []))
                local.logprobs.append(list(r.logprobs or []))
                local.finished.append(r.finish_reason == "stop")
    if dp == 1:
        return local
    out = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    for part in _all_gather(local, group=ps.get_data_parallel_group()):
        out.prompt_index += part.prompt_index
        out.completion_ids += part.completion_ids
        out.logprobs += part.logprobs
        out.finished += part.finished
    return out


def distributed_score(
    rewards: Mapping[str, tuple[float, Any]], texts: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> RewardScores:
    """:func:`score_completions` with the work split over all ranks (rank r scores samples r, r + world, ...) and
    the scores all-gathered; every rank returns all scores."""
    world, rank, _, _ = _layout()
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
    for gathered in _all_gather(local):
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
    engine: Any,
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
) -> dict[str, float]:
    """Held-out accuracy with one sample per prompt at ``temperature`` and, with ``greedy``, the arg-max decode.

    A sample whose reward gave no verdict (timeout / error / unavailable) is left out of the means and counted in
    ``reward_failures_<label>``; past ``max_reward_failure_rate`` the evaluation stops (:class:`RewardFailureError`).

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
    for label, temp, p in modes:
        samples = distributed_rollout(
            engine, prompt_ids, n=1, temperature=temp, top_p=p, max_new_tokens=max_new_tokens, seed=seed + 17
        )
        texts = decode_completions(tokenizer, samples.completion_ids)
        scores = distributed_score(rewards, texts, rows)
        check_reward_failures(scores, max_reward_failure_rate, f"held-out evaluation ({label})")
        per = scores.per
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
    return result


@torch.no_grad()
def estimate_pass_rates(
    engine: Any,
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
    """Fraction of ``samples_per_prompt`` sampled completions per prompt that the accuracy reward scores > 0.5,
    over the samples it gave a verdict on.

    Raises:
        RewardFailureError: The accuracy reward failed on more than ``max_reward_failure_rate`` of the samples, or on
            every sample of a prompt (naming the prompt).
    """
    samples = distributed_rollout(
        engine,
        encode_prompts(tokenizer, rows, template=template),
        n=samples_per_prompt,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed + 29,
    )
    texts = decode_completions(tokenizer, samples.completion_ids)
    only = {accuracy_reward: rewards[accuracy_reward]}
    scores = distributed_score(only, texts, [rows[i] for i in samples.prompt_index])
    check_reward_failures(scores, max_reward_failure_rate, "curriculum pass-rate estimate")
    acc = scores.per[accuracy_reward].view(len(rows), samples_per_prompt)
    passed = torch.where(acc.isnan(), acc, (acc > 0.5).double())
    rates = passed.nanmean(1)
    for i, rate in enumerate(rates.tolist()):
        if math.isnan(rate):
            raise RewardFailureError(
                f"curriculum pass-rate estimate: reward {accuracy_reward!r} gave no verdict on any of the "
                f"{samples_per_prompt} samples of prompt id {rows[i].get('id', i)!r}; last error: "
                f"{scores.last_error.get(accuracy_reward, '?')}"
            )
    return rates.tolist()


# ----------------------------------------------------------------------------------------------------------------
# The policy update (megatron forward_backward_func, any TP / PP / DP)
# ----------------------------------------------------------------------------------------------------------------

# Loss metrics averaged over tokens (weights: completion tokens) and reduced over all ranks.
_TOKEN_METRICS = (
    "pg_loss",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "ratio_mean",
    "kl",
    "is_weight_mean",
    "generator_trainer_logprob_diff",
)


@dataclass(kw_only=True, slots=True)
class PolicyBatch:
    """The samples of one rollout that enter the update, as right-padded tensors (identical on every rank)."""

    input_ids: torch.Tensor
    """``[N, W]`` prompt + completion tokens without the last one."""
    targets: torch.Tensor
    """``[N, W]`` the next tokens."""
    mask: torch.Tensor
    """``[N, W]`` float, 1 where the target is a completion token."""
    advantages: torch.Tensor
    """``[N]`` float advantages."""
    generator_logprobs: torch.Tensor
    """``[N, W]`` the rollout engine's log-probs of the targets (0 outside the mask)."""
    lengths: torch.Tensor
    """``[N]`` real positions of each row (prompt + completion - 1); the rest of the row is padding."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def pack_policy_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    generator_logprobs: Sequence[Sequence[float]],
    advantages: torch.Tensor,
    *,
    pad_id: int,
    multiple_of: int = 8,
) -> PolicyBatch:
    """Right-pad prompt + completion pairs into a :class:`PolicyBatch` (width rounded up to ``multiple_of``)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs) - 1
    width = -(-width // multiple_of) * multiple_of
    n = len(seqs)
    ids = torch.full((n, width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width)
    gen = torch.zeros(n, width)
    for r, (p, s, lp) in enumerate(zip(prompts, seqs, generator_logprobs, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, len(p) - 1 : len(s) - 1] = 1.0
        gen[r, len(p) - 1 : len(p) - 1 + len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return PolicyBatch(
        input_ids=ids[:, :-1].contiguous(),
        targets=ids[:, 1:].contiguous(),
        mask=mask,
        advantages=advantages.float(),
        generator_logprobs=gen,
        lengths=torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long),
    )


@dataclass(kw_only=True, slots=True)
class UpdatePlan:
    """The micro-batches of one global batch on this data-parallel rank, and the shapes megatron's schedule needs."""

    micro_batches: list[dict[str, Any]]
    """Per micro-batch: the model inputs (``input_ids``, ``position_ids``, ``packed_seq_params`` when packed) and
    the loss tensors cut to the micro-batch's own longest row (``targets``, ``mask``, ``advantages``,
    ``generator_logprobs``, ``[m, w]``)."""
    seq_length: int
    """Sequence length of every micro-batch's model input (pipeline communication shape)."""
    micro_batch_size: int
    """Rows of every micro-batch's model input (1 when packed)."""
    fed_tokens: int
    """Positions run through the model, padding included."""


def plan_micro_batches(
    batch: PolicyBatch,
    rows: torch.Tensor,
    micro: int,
    *,
    pack: bool,
    uniform: bool,
    multiple: int = 8,
) -> UpdatePlan:
    """Cut ``rows`` of ``batch`` into micro-batches of ``micro`` sequences.

    With ``pack`` the sequences of a micro-batch are concatenated into one ``[1, T]`` row whose boundaries reach
    attention as megatron ``PackedSeqParams`` (each sequence attends only to itself and its positions restart at
    0), so no padding is computed except the rounding of ``T`` up to ``multiple``; without it each micro-batch is
    padded to its own longest row (not the rollout's). With ``uniform`` (pipeline parallelism: one communication
    shape) every micro-batch is padded to the plan's longest, and unpacked ones to ``micro`` rows (extra rows fully
    masked).
    """
    from nemotron_plugins.puzzle.attention import packed_seq_params_from_segment_ids

    def up(x: int) -> int:
        return max(multiple, -(-x // multiple) * multiple)

    groups = [rows[s : s + micro] for s in range(0, rows.numel(), micro)]
    out: list[dict[str, Any]] = []
    for idx in groups:
        lens = batch.lengths[idx]
        w = int(lens.max())
        mb: dict[str, Any] = {
            "rows": idx,
            "targets": batch.targets[idx, :w],
            "mask": batch.mask[idx, :w],
            "advantages": batch.advantages[idx],
            "generator_logprobs": batch.generator_logprobs[idx, :w],
        }
        if pack:
            seg = torch.repeat_interleave(torch.arange(idx.numel()), lens)
            starts = torch.cumsum(lens, 0) - lens
            cols = torch.arange(int(lens.sum())) - torch.repeat_interleave(starts, lens)
            src = idx[seg]
            mb["unpack"] = (seg, cols)
            mb["input_ids"] = batch.input_ids[src, cols].unsqueeze(0)
            mb["packed_targets"] = batch.targets[src, cols].unsqueeze(0)
            mb["position_ids"] = cols.unsqueeze(0)
        else:
            mb["input_ids"] = batch.input_ids[idx, :w]
        out.append(mb)
    if pack:
        length = max(up(int(mb["input_ids"].shape[1])) for mb in out) if uniform else None
        for mb in out:
            real = int(mb["input_ids"].shape[1])
            target = length if length is not None else up(real)
            extra = target - real
            segments = torch.cat([mb["unpack"][0], torch.full((extra,), -1, dtype=torch.long)]).unsqueeze(0)
            for key in ("input_ids", "packed_targets", "position_ids"):
                mb[key] = torch.cat([mb[key], mb[key].new_zeros(1, extra)], dim=1)
            mb["packed_seq_params"] = packed_seq_params_from_segment_ids(segments)
        fed = sum(int(mb["input_ids"].numel()) for mb in out)
        seq_length = max(int(mb["input_ids"].shape[1]) for mb in out) if out else 0
        return UpdatePlan(micro_batches=out, seq_length=seq_length, micro_batch_size=1, fed_tokens=fed)
    width = max((int(mb["input_ids"].shape[1]) for mb in out), default=0)
    for mb in out:
        w = up(width) if uniform else up(int(mb["input_ids"].shape[1]))
        missing_rows = micro - mb["rows"].numel() if uniform else 0
        for key in ("input_ids", "targets", "mask", "generator_logprobs"):
            t = mb[key]
            mb[key] = torch.nn.functional.pad(t, (0, w - t.shape[1], 0, missing_rows))
        if missing_rows:
            mb["advantages"] = torch.cat([mb["advantages"], mb["advantages"].new_zeros(missing_rows)])
        n, w = mb["input_ids"].shape
        mb["position_ids"] = torch.arange(w).unsqueeze(0).expand(n, w)
    fed = sum(int(mb["input_ids"].numel()) for mb in out)
    return UpdatePlan(micro_batches=out, seq_length=up(width), micro_batch_size=micro, fed_tokens=fed)


def _forward_micro_batch(model: Any, mb: Mapping[str, Any]) -> torch.Tensor:
    """The model chunk's forward on a micro-batch (causal; packed sequences attend within themselves): logits on
    the last pipeline stage, hidden states elsewhere (megatron's schedule feeds the previous stage's output in)."""
    device = next(model.parameters()).device
    tokens = mb["input_ids"].to(device)
    positions = mb["position_ids"].to(device)
    params = mb.get("packed_seq_params")
    if params is None:
        return model(tokens, positions, None)
    for name in ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded"):
        value = getattr(params, name, None)
        if value is not None and value.device != device:
            setattr(params, name, value.to(device))
    return model(tokens, positions, None, packed_seq_params=params)


def _logprobs(output: torch.Tensor, targets: torch.Tensor, temperature: float, vocab_size: int) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    from nemotron_plugins.rl.logprobs import token_logprobs

    return token_logprobs(
        output,
        targets,
        temperature=temperature,
        vocab_parallel=ps.get_tensor_model_parallel_world_size() > 1,
        vocab_size=vocab_size,
    )


def _micro_batch_logprobs(
    output: torch.Tensor, mb: Mapping[str, Any], temperature: float, vocab_size: int
) -> torch.Tensor:
    """``[m, w]`` log-probs of the micro-batch's targets (unpacked from the packed row when packed)."""
    if "unpack" not in mb:
        return _logprobs(output, mb["targets"].to(output.device), temperature, vocab_size)
    packed = _logprobs(output, mb["packed_targets"].to(output.device), temperature, vocab_size)[0]
    seg, cols = mb["unpack"]
    out = packed.new_zeros(tuple(mb["targets"].shape))
    return out.index_put((seg.to(out.device), cols.to(out.device)), packed[: seg.numel()])


def _run_schedule(model: Any, plan: UpdatePlan, step_fn: Any, *, forward_only: bool) -> list[Any]:
    from nemotron_plugins.training.step import run_schedule

    return run_schedule(
        [model],
        plan.micro_batches,
        step_fn,
        seq_length=plan.seq_length,
        micro_batch_size=plan.micro_batch_size,
        forward_only=forward_only,
    )


@torch.no_grad()
def _forward_logprobs(model: Any, plan: UpdatePlan, temperature: float, vocab_size: int) -> list[torch.Tensor]:
    """Per-micro-batch target log-probs (on the last pipeline stage; empty elsewhere)."""

    def step_fn(data_iterator: Any, model_: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        output = _forward_micro_batch(model_, mb)

        def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            lp = _micro_batch_logprobs(out, mb, temperature, vocab_size)
            return out.new_zeros(()), torch.tensor(0, dtype=torch.int), {"logprobs": lp.detach().cpu()}

        return output, loss_func

    reports = _run_schedule(model, plan, step_fn, forward_only=True)
    return [r["logprobs"] for r in reports]


def policy_update(
    model: Any,
    optimizer: Any,
    batch: PolicyBatch,
    config: RecipeConfig,
    *,
    vocab_size: int,
    ref_model: Any | None = None,
    scheduler: Any | None = None,
    loss_fn: Any | None = None,
) -> dict[str, float]:
    """The rollout's optimizer steps on the clipped policy loss (``epochs_per_rollout`` x rollout /
    ``global_batch_size``), each through the shared :func:`~nemotron_plugins.training.step.optimizer_step`.

    Every rank passes the same ``batch``. The samples are split into that many global batches, each split over the
    data-parallel replicas (replica r takes rows r, r + dp, ...) and cut into micro-batches of
    ``micro_batch_size`` that go through megatron's ``forward_backward_func``.

    Args:
        model: The policy wrapped in megatron DDP (:func:`nemotron_plugins.training.setup.build_optimizer`).
        optimizer: Its megatron optimizer.
        batch: The samples (:func:`pack_policy_batch`).
        config: The run config (``algorithm`` holds the loss settings, ``generation.temperature`` the sampling
            temperature the log-probs use).
        vocab_size: Real vocabulary size (the logits of megatron's padding ids are excluded, as in the engine).
        ref_model: Frozen reference policy (same layout), needed when ``algorithm.beta > 0``.
        scheduler: megatron's LR scheduler, advanced once per optimizer step.
        loss_fn: The algorithm's loss (``RLAlgorithm.loss``); default :func:`~nemotron_plugins.rl.loss.
            compute_policy_loss`.

    Returns:
        Metrics identical on every rank: ``loss`` (mean over optimizer steps of the global-batch loss),
        ``grad_norm`` (mean), the token-weighted loss metrics (``clip_fraction``, ``kl``, ``ratio_mean``, ...),
        ``ratio_max`` and ``generator_trainer_logprob_diff`` (mean of generator minus trainer log-prob).
    """
    from megatron.core import parallel_state as ps

    from nemotron_plugins.rl.loss import compute_policy_loss
    from nemotron_plugins.training.step import optimizer_step

    loss_fn = loss_fn or compute_policy_loss
    cfg = config.algorithm
    temp = config.generation.temperature
    micro = config.micro_batch_size
    # ``updates_per_rollout`` counts every epoch's steps; one epoch is that many over the epochs.
    updates_per_epoch = max(1, cfg.updates_per_rollout(config.global_batch_size) // cfg.epochs_per_rollout)
    _, _, dp, dp_rank = _layout()
    uniform = ps.get_pipeline_model_parallel_world_size() > 1
    pack = config.model.layer_spec != "puzzle_local"  # megatron's local attention takes no PackedSeqParams
    tp = ps.get_tensor_model_parallel_world_size()
    multiple = math.lcm(8, tp) if config.parallel.sequence_parallel else 8
    reports_rank = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
    n = len(batch)
    chunks = [c for c in torch.arange(n).tensor_split(updates_per_epoch) if c.numel()]
    plans = [
        plan_micro_batches(batch, chunk[dp_rank::dp], micro, pack=pack, uniform=uniform, multiple=multiple)
        for chunk in chunks
    ]

    # Log-probs of the policy before any update ("old") and of the reference, attached to the micro-batches (on the
    # last pipeline stage, the only one that computes the loss).
    module = model.module if hasattr(model, "module") else model
    module.eval()
    if not (len(chunks) == 1 and cfg.epochs_per_rollout == 1):
        for plan in plans:
            for mb, lp in zip(plan.micro_batches, _forward_logprobs(model, plan, temp, vocab_size), strict=False):
                mb["old_logprobs"] = lp
    if cfg.beta > 0:
        if ref_model is None:
            raise ValueError(f"algorithm.beta = {cfg.beta} > 0 needs ref_model")
        for plan in plans:
            for mb, lp in zip(plan.micro_batches, _forward_logprobs(ref_model, plan, temp, vocab_size), strict=False):
                mb["ref_logprobs"] = lp
    module.train()

    # Positions one epoch runs through the model (this replica's plans) beside the real ones and what padding every
    # row to the rollout's longest would run; summed over the replicas below.
    fed = torch.tensor(
        [
            float(sum(p.fed_tokens for p in plans)) if reports_rank else 0.0,
            float(batch.lengths.sum()) if reports_rank and dp_rank == 0 else 0.0,
            float(batch.input_ids.numel()) if reports_rank and dp_rank == 0 else 0.0,
        ],
        dtype=torch.float64,
    )
    sums = torch.zeros(len(_TOKEN_METRICS) + 2, dtype=torch.float64)  # metrics..., token weight, loss
    ratio_max = torch.zeros((), dtype=torch.float64)
    grad_norms: list[float] = []
    for _epoch in range(cfg.epochs_per_rollout):
        for chunk, plan in zip(chunks, plans, strict=True):
            global_tokens = float(batch.mask[chunk].sum())
            global_sequences = float(chunk.numel())

            def step_fn(
                data_iterator: Any, model_: Any, gt: float = global_tokens, gs: float = global_sequences
            ) -> tuple[torch.Tensor, Any]:
                mb = next(data_iterator)
                output = _forward_micro_batch(model_, mb)

                def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    dev = out.device
                    mask = mb["mask"].to(dev)
                    lp = _micro_batch_logprobs(out, mb, temp, vocab_size)
                    old = mb["old_logprobs"].to(dev) if "old_logprobs" in mb else lp.detach()
                    gen = mb["generator_logprobs"].to(dev)
                    loss, metrics = loss_fn(
                        lp,
                        old,
                        mb["advantages"].to(dev),
                        mask,
                        cfg=cfg,
                        ref_logprobs=mb["ref_logprobs"].to(dev) if "ref_logprobs" in mb else None,
                        generator_logprobs=gen if cfg.importance_sampling_correction else None,
                        total_tokens_in_global_batch=gt,
                        total_sequences_in_global_batch=gs,
                    )
                    tokens_here = float(mask.sum())
                    # The generator's log-probs against the policy that generated them (the old policy, before
                    # this rollout's updates), not the one being updated.
                    metrics["generator_trainer_logprob_diff"] = (
                        float(((gen - old) * mask).sum()) / tokens_here if tokens_here else 0.0
                    )
                    report = {key: float(metrics.get(key, 0.0)) * tokens_here for key in _TOKEN_METRICS}
                    report["_tokens"] = tokens_here
                    report["_loss"] = float(loss.detach())
                    report["_ratio_max"] = float(metrics.get("ratio_max", 0.0))
                    return loss, mask.sum().to(torch.int), report

                return output, loss_func

            stepped = optimizer_step(
                [model],
                optimizer,
                scheduler,
                plan.micro_batches,
                step_fn,
                seq_length=plan.seq_length,
                micro_batch_size=plan.micro_batch_size,
            )
            reports = stepped.reports
            grad_norms.append(stepped.grad_norm)
            if reports_rank:
                for report in reports:
                    for i, key in enumerate(_TOKEN_METRICS):
                        sums[i] += report[key]
                    sums[-2] += report["_tokens"]
                    sums[-1] += report["_loss"]
                    ratio_max = torch.maximum(ratio_max, torch.tensor(report["_ratio_max"], dtype=torch.float64))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(fed)
        torch.distributed.all_reduce(ratio_max, op=torch.distributed.ReduceOp.MAX)
    steps = max(1, len(grad_norms))
    out = {key: float(sums[i] / sums[-2]) if sums[-2] > 0 else 0.0 for i, key in enumerate(_TOKEN_METRICS)}
    if not cfg.importance_sampling_correction:
        out.pop("is_weight_mean")
    out["loss"] = float(sums[-1]) / steps
    out["ratio_max"] = float(ratio_max)
    out["grad_norm"] = sum(grad_norms) / steps
    out["optimizer_steps"] = float(len(grad_norms))
    out["train/fed_tokens"] = float(fed[0])
    out["train/real_tokens"] = float(fed[1])
    out["train/padded_over_real"] = float(fed[0] / fed[1]) if fed[1] > 0 else 0.0
    out["train/padded_over_real_rollout_longest"] = float(fed[2] / fed[1]) if fed[1] > 0 else 0.0
    return out


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
    engine: Any,
    config: RecipeConfig,
    algorithm: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    seed: int,
    timings: dict[str, float],
) -> RolloutRound:
    """Generate ``num_generations`` completions for each prompt of ``batch``, score them and compute advantages
    (adds the rollout / reward seconds to ``timings``)."""
    cfg, gen = config.algorithm, config.generation
    g = cfg.num_generations
    t0 = time.perf_counter()
    samples = distributed_rollout(
        engine,
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
    scores = distributed_score(rewards, texts, sample_rows)
    timings["reward"] += time.perf_counter() - t1
    lengths = torch.tensor([len(c) for c in samples.completion_ids], dtype=torch.float64)
    finished = torch.tensor(samples.finished, dtype=torch.bool)
    shaped = algorithm.shape_rewards(scores.total, lengths, finished, cfg)
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


def train_step(
    *,
    step: int,
    model: Any,
    optimizer: Any,
    engine: Any,
    config: RecipeConfig,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    prompt_ids: Sequence[Sequence[int]],
    batch: Sequence[int],
    rewards: Mapping[str, tuple[float, Any]],
    vocab_size: int,
    ref_model: Any | None = None,
    pass_rates: Sequence[float] | None = None,
    scheduler: Any | None = None,
    next_batch: Any | None = None,
) -> dict[str, float]:
    """One rollout + update on the prompts ``batch`` (every rank calls it); returns the step's metrics.

    The advantages and the loss come from the registered algorithm ``algorithm.algorithm`` (``ALGORITHMS``), so a
    plugin registered under a new name takes effect. Samples whose reward failed leave the advantages (their group
    is renormalised over the rest; a group left with < 2 scored samples drops out) and the step stops past
    ``max_reward_failure_rate``. With ``skip_uniform_groups``, groups without signal are dropped and, when
    ``next_batch`` (a callable returning the sampler's next prompt indices) is given, up to
    ``algorithm.max_refill_rounds`` extra rollouts refill the update to ``num_prompts_per_rollout`` groups."""
    from nemotron_plugins.registry import ALGORITHMS

    cfg = config.algorithm
    algorithm = ALGORITHMS.get(cfg.algorithm)
    g = cfg.num_generations
    wanted = cfg.num_prompts_per_rollout
    t0 = time.perf_counter()
    timings = {"rollout": 0.0, "reward": 0.0}
    common = {
        "engine": engine,
        "config": config,
        "algorithm": algorithm,
        "tokenizer": tokenizer,
        "rows": rows,
        "prompt_ids": prompt_ids,
        "rewards": rewards,
        "timings": timings,
    }
    rounds = [rollout_round(batch=batch, seed=_mix_seed(config.seed, step), **common)]
    check_reward_failures(rounds[0].scores, config.max_reward_failure_rate, f"step {step + 1}")
    refill_rounds = cfg.max_refill_rounds if cfg.skip_uniform_groups and next_batch is not None else 0
    while len(rounds) <= refill_rounds and sum(int(r.keep_groups.sum()) for r in rounds) < wanted:
        extra = rollout_round(batch=next_batch(), seed=_mix_seed(config.seed, step, len(rounds)), **common)
        check_reward_failures(extra.scores, config.max_reward_failure_rate, f"step {step + 1} (refill)")
        rounds.append(extra)

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
    if completions:
        packed = pack_policy_batch(
            prompts,
            completions,
            gen_lps,
            torch.tensor(advs, dtype=torch.float32),
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        metrics.update(
            policy_update(
                model,
                optimizer,
                packed,
                config,
                vocab_size=vocab_size,
                ref_model=ref_model,
                scheduler=scheduler,
                loss_fn=algorithm.loss,
            )
        )
        metrics["train/sequences"] = float(len(completions))
        metrics["train/tokens"] = float(packed.mask.sum())
        if config.generation.engine not in EMBEDDED_ENGINES:
            engine.update_weights(model=model.module if hasattr(model, "module") else model)
    else:
        metrics["train/sequences"] = 0.0
        metrics["train/tokens"] = 0.0
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
    return ", ".join(f"{k}={int(v) if k == 'n' else round(v, 4)}" for k, v in ev.items())


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
    from nemotron_plugins.puzzle.block_config import to_hf_config
    from nemotron_plugins.runtime.metrics import MetricsLogger
    from nemotron_plugins.training.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
    from nemotron_plugins.training.setup import (
        build_model,
        build_optimizer,
        build_scheduler,
        write_checkpoint_metadata,
    )

    start = time.perf_counter()
    world, rank, dp, _ = _layout()
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
    model, model_config, tokenizer = build_policy(config)
    vocab_size = len(tokenizer)
    all_prompt_ids = encode_prompts(tokenizer, all_rows, template=config.data.chat_template)
    longest = max(len(p) for p in all_prompt_ids)
    if longest + gen.max_new_tokens > config.model.seq_length:
        raise ValueError(
            f"a training prompt has {longest} tokens; with generation.max_new_tokens = {gen.max_new_tokens} it "
            f"needs model.seq_length >= {longest + gen.max_new_tokens} (is {config.model.seq_length}); lower "
            "data.max_seq_length or raise model.seq_length"
        )
    ref_model = None
    if alg.beta > 0:
        ref_model = build_model(config, model_config)
        ref_model.load_state_dict(model.state_dict())
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        if config.parallel.pipeline_model_parallel_size > 1:
            ref_model.config.pipeline_dtype = next(ref_model.parameters()).dtype
    engine = build_engine(config, model, model_config, tokenizer)
    ddp, optimizer = build_optimizer(config, model)
    optimizer.reload_model_params()
    scheduler = build_scheduler(config, optimizer)
    rewards = build_rewards(config)
    accuracy_reward = accuracy_reward_name(config)
    if is_rank0:
        write_checkpoint_metadata(ckpt_dir, model_config, tokenizer)
    say(
        f"{len(all_rows)} training / {len(heldout)} held-out prompts; policy {type(model).__name__} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters on rank 0), world {world} "
        f"(TP{config.parallel.tensor_model_parallel_size} PP{config.parallel.pipeline_model_parallel_size} DP{dp}), "
        f"engine {gen.engine}"
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
    resumed = latest_checkpoint(load_dir) if load_dir.exists() else None
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
            loaded = load_checkpoint(load_dir, model=[ddp], optimizer=optimizer, scheduler=scheduler)
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
                result.before = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
                say(f"held-out before ({time.perf_counter() - t:.0f}s): {_fmt(result.before)}")
            kept_rates = None
            if curriculum:
                t = time.perf_counter()
                if config.sampler.pass_rates_path:
                    pass_rates = _read_pass_rates(config.sampler.pass_rates_path, all_rows)
                    origin = config.sampler.pass_rates_path
                else:
                    pass_rates = estimate_pass_rates(
                        engine,
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
        metrics_log = MetricsLogger(
            jsonl_path=logging_cfg.jsonl_path or out / "metrics.jsonl",
            tensorboard_dir=logging_cfg.tensorboard_dir,
            wandb_project=logging_cfg.wandb_project,
            total=config.train_steps,
            progress=logging_cfg.progress_bar,
            progress_keys=[
                "reward/total",
                "accuracy",
                "reward/" + (evaluation.format_reward or accuracy_reward),
                "loss",
            ],
            resume_step=step,
        )

        def save(at: int) -> None:
            save_checkpoint(
                ckpt_dir,
                at,
                model=[ddp],
                optimizer=optimizer,
                scheduler=scheduler,
                state={"pass_rates": pass_rates, "before": result.before, "sampler": sampler.state_dict()},
                keep_last=config.checkpoint.keep_last,
                config={"recipe": config.name, "task": config.task, "puzzle_config": to_hf_config(model_config)},
            )

        end_step = config.stop_after_steps or config.train_steps
        with metrics_log:
            while step < end_step:
                batch = _next_batch(sampler)
                metrics = train_step(
                    step=step,
                    model=ddp,
                    optimizer=optimizer,
                    engine=engine,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=batch,
                    rewards=rewards,
                    vocab_size=vocab_size,
                    ref_model=ref_model,
                    pass_rates=kept_rates,
                    scheduler=scheduler,
                    next_batch=lambda: _next_batch(sampler),
                )
                step += 1
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                if heldout and evaluation.interval and step % evaluation.interval == 0 and step < config.train_steps:
                    ev = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
                    metrics.update({f"eval/{k}": v for k, v in ev.items()})
                metrics_log.log(step, metrics)
                if is_rank0 and step % logging_cfg.log_interval == 0 and not logging_cfg.progress_bar:
                    say(f"step {step}/{config.train_steps}: {_fmt({k: metrics[k] for k in metrics if '/' not in k})}")
                result.history.append(metrics)
                interval = config.checkpoint.save_interval
                if (interval and step % interval == 0) or step == end_step:
                    save(step)
        result.steps = step
        if heldout and step == config.train_steps:
            t = time.perf_counter()
            result.after = evaluate_policy(engine, tokenizer, heldout, rewards, **eval_kwargs)
            say(f"held-out after ({time.perf_counter() - t:.0f}s):  {_fmt(result.after)}")
    finally:
        for _, reward in rewards.values():
            reward.close()
        engine.close()
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
    command = shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    print(f"[grpo] {result.steps} steps, {result.wall_time_s:.0f}s; output {out}", flush=True)
    if command:
        print(f"[grpo] reproduce: {command}", flush=True)
