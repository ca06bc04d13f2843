"""RPO / DPO on Megatron (``task="rpo"``): offline from a pairs file, or online with pairs sampled from the policy.

:func:`run_rpo` reads the run config directly and trains on the shared training stack
(:mod:`nemotron_plugins.training`): the policy ``GPTModel`` with megatron DDP, optimizer and LR scheduler, each step
one :func:`~nemotron_plugins.training.step.optimizer_step` on megatron's schedules, distributed checkpoints with exact
resume. A frozen reference policy (the same starting weights, never updated) gives ``log ref(y)``.

* **Offline** (``preference.mode="offline"``): ``global_batch_size`` pairs per step from ``data.path``
  (HelpSteer-style JSONL with ``chosen_reward`` / ``rejected_reward`` for RPO); held-out pairs from
  ``data.eval_path`` are evaluated by the implicit reward (share of pairs with ``h > 0`` and the mean loss).
* **Online** (``preference.mode="online"``): per step, ``global_batch_size`` prompts from ``data.path`` (RL prompt
  rows); the policy samples ``preference.num_generations`` replies each with the megatron rollout engine
  (:func:`~nemotron_plugins.rl.generation.build_engine` / :func:`~nemotron_plugins.rl.generation.distributed_rollout`);
  ``rewards`` (the reward model, e.g. ``megatron_reward_model``) score them; the best and worst reply of each prompt
  form a pair with their rewards. Prompts whose replies all score the same carry no preference and are skipped
  (counted); replies the reward could not score (timeout / error / unavailable) are left out of the pair choice,
  never scored as 0, and the run stops past ``max_reward_failure_rate``. Evaluation: one sampled reply (and a greedy
  one with ``evaluation.greedy``) per held-out prompt, scored by the same rewards; the replies are written to
  ``<output_dir>/eval_{before,after}.jsonl``.

The loss (:mod:`nemotron_plugins.preference.losses`) is ``preference.loss`` averaged over the step's pairs, with
sequence log-probabilities summed over reply tokens (end-of-turn included) at temperature 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nemotron_plugins.runtime.distributed import world_rank

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig
    from nemotron_plugins.preference.pairs import EncodedPair

logger = logging.getLogger(__name__)


class RPOConfigError(ValueError):
    """The run config cannot be trained by RPO; the message names the field."""


@dataclass(kw_only=True, slots=True)
class RPOResult:
    """What :func:`run_rpo` returns (every rank)."""

    losses: dict[int, float] = field(default_factory=dict)
    """Mean preference loss per step run by this call."""
    steps_done: int = 0
    """Completed steps."""
    start_step: int = 0
    """Steps done before this call (resume)."""
    eval_before: dict[str, float] | None = None
    """Held-out metrics before training."""
    eval: dict[str, float] | None = None
    """Held-out metrics after training."""
    skipped_prompts: int = 0
    """Online: prompts whose replies all scored the same (no pair)."""


# ----------------------------------------------------------------------------------------------------------------
# Log-probabilities and the loss on megatron's schedules
# ----------------------------------------------------------------------------------------------------------------


def _sequence_logps(output: torch.Tensor, mb: dict[str, Any], vocab_size: int) -> torch.Tensor:
    """``[2m]`` summed reply log-probs from the model's logits (vocab-parallel under TP)."""
    from megatron.core import parallel_state as ps

    from nemotron_plugins.preference.losses import sequence_logps
    from nemotron_plugins.rl.logprobs import token_logprobs

    token = token_logprobs(
        output,
        mb["targets"].to(output.device),
        vocab_parallel=ps.get_tensor_model_parallel_world_size() > 1,
        vocab_size=vocab_size,
    )
    return sequence_logps(token, mb["reply_mask"].to(output.device))


def _forward(model: Any, mb: dict[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(mb["input_ids"].to(device), mb["position_ids"].to(device), None)


def reference_logps(
    ref_model: Any, micro_batches: Sequence[dict[str, Any]], width: int, micro: int, vocab: int
) -> None:
    """Store the frozen reference's ``[2m]`` sequence log-probs in each micro-batch as ``ref_logps``."""
    from nemotron_plugins.training.step import run_schedule

    def step_fn(data_iterator: Iterator[dict[str, Any]], model_: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        out = _forward(model_, mb)

        def loss_func(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            mb["ref_logps"] = _sequence_logps(output, mb, vocab).detach()
            return output.new_zeros(()), torch.tensor(0, dtype=torch.int), {}

        return out, loss_func

    with torch.no_grad():
        run_schedule(
            [ref_model], micro_batches, step_fn, seq_length=width, micro_batch_size=2 * micro, forward_only=True
        )


def pair_loss(logps: torch.Tensor, mb: dict[str, Any], cfg: RecipeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``([m] losses, [m] implicit gaps h)`` of a micro-batch from the policy's ``[2m]`` sequence log-probs."""
    from nemotron_plugins.preference.losses import dpo_loss, implicit_reward_gap, rpo_loss

    pref = cfg.preference
    m = logps.numel() // 2
    ref = mb["ref_logps"].to(logps.device)
    pc, pr, rc, rr = logps[:m], logps[m:], ref[:m], ref[m:]
    h = implicit_reward_gap(pc, pr, rc, rr, pref.beta).detach()
    if pref.loss == "dpo":
        return dpo_loss(pc, pr, rc, rr, beta=pref.beta), h
    rewards = mb["rewards"].to(logps.device)
    losses = rpo_loss(
        pc, pr, rc, rr, rewards[:m], rewards[m:], beta=pref.beta, reward_scale=pref.reward_scale, distance=pref.loss
    )
    return losses, h


def evaluate_offline(
    model: Any, ref_model: Any, pairs: Sequence[EncodedPair], cfg: RecipeConfig, pad_id: int, vocab: int
) -> dict[str, float]:
    """Held-out pairs: ``accuracy`` (share with implicit gap ``h > 0``, a tie counting one half: the policy before
    any update is the reference, every ``h`` is 0 and the accuracy 0.5), mean ``loss`` and mean ``h``."""
    from nemotron_plugins.preference.pairs import split_micro_batches
    from nemotron_plugins.training.step import run_schedule

    micro = cfg.micro_batch_size
    micro_batches, width = split_micro_batches(pairs, micro, pad_id, for_reward_model=False)
    reference_logps(ref_model, micro_batches, width, micro, vocab)
    stats = torch.zeros(3, dtype=torch.float64)

    def step_fn(data_iterator: Iterator[dict[str, Any]], model_: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        out = _forward(model_, mb)

        def loss_func(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            losses, h = pair_loss(_sequence_logps(output, mb, vocab), mb, cfg)
            hits = (h > 0).double().sum() + 0.5 * (h == 0).double().sum()  # a tie (h == 0: the reference) is half
            stats.add_(torch.stack([hits, losses.double().sum(), h.double().sum()]).cpu())
            return output.new_zeros(()), torch.tensor(0, dtype=torch.int), {}

        return out, loss_func

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_schedule(
                [model], micro_batches, step_fn, seq_length=width, micro_batch_size=2 * micro, forward_only=True
            )
    finally:
        model.train(was_training)
    from nemotron_plugins.reward_model.trainer import _broadcast_from_last_stage

    stats = _broadcast_from_last_stage(stats)
    n = len(pairs)
    return {"accuracy": float(stats[0]) / n, "loss": float(stats[1]) / n, "gap": float(stats[2]) / n, "pairs": n}


# ----------------------------------------------------------------------------------------------------------------
# Online: sampling, scoring, pairing
# ----------------------------------------------------------------------------------------------------------------


def sample_and_score(
    engine: Any,
    rewards: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    prompts: Sequence[list[int]],
    *,
    n: int,
    cfg: RecipeConfig,
    seed: int,
    temperature: float | None = None,
) -> tuple[Any, Any, list[str]]:
    """``n`` replies per prompt from the policy and their reward scores: ``(Samples, RewardScores, texts)``."""
    from nemotron_plugins.rl.controller import decode_completions, score_completions
    from nemotron_plugins.rl.generation import GenerationLayout, distributed_rollout

    gen = cfg.generation
    samples = distributed_rollout(
        engine,
        prompts,
        n=n,
        temperature=gen.temperature if temperature is None else temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=seed,
        layout=GenerationLayout.of_engine(engine),
    )
    texts = decode_completions(tokenizer, samples.completion_ids)
    # Every rank scores every reply: an in-process reward model runs its forward on all TP ranks together.
    scores = score_completions(rewards, texts, [rows[i] for i in samples.prompt_index])
    return samples, scores, texts


def online_pairs(samples: Any, scores: Any, prompts: Sequence[list[int]]) -> tuple[list[EncodedPair], int]:
    """The best and the worst scored reply of each prompt as a pair; ``(pairs, prompts without a pair)``."""
    from nemotron_plugins.preference.pairs import EncodedPair

    by_prompt: dict[int, list[int]] = {}
    for k, i in enumerate(samples.prompt_index):
        if math.isfinite(float(scores.total[k])):  # a failed score never becomes a reward of 0
            by_prompt.setdefault(i, []).append(k)
    pairs: list[EncodedPair] = []
    skipped = len({*samples.prompt_index}) - len(by_prompt)
    for i, ks in sorted(by_prompt.items()):
        best = max(ks, key=lambda k: float(scores.total[k]))
        worst = min(ks, key=lambda k: float(scores.total[k]))
        if len(ks) < 2 or float(scores.total[best]) == float(scores.total[worst]):
            skipped += 1
            continue
        prompt = list(prompts[i])
        pairs.append(
            EncodedPair(
                chosen=prompt + list(samples.completion_ids[best]),
                rejected=prompt + list(samples.completion_ids[worst]),
                prompt_length=len(prompt),
                chosen_reward=float(scores.total[best]),
                rejected_reward=float(scores.total[worst]),
            )
        )
    return pairs, skipped


def evaluate_online(
    engine: Any,
    rewards: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    prompts: Sequence[list[int]],
    cfg: RecipeConfig,
    out_path: Path | None,
) -> dict[str, float]:
    """Mean reward of one sampled (and, with ``evaluation.greedy``, one greedy) reply per held-out prompt."""
    from nemotron_plugins.rl.controller import check_reward_failures

    metrics: dict[str, float] = {"prompts": float(len(rows))}
    records: list[dict[str, Any]] = []
    modes = [("sampled", None)] + ([("greedy", 0.0)] if cfg.evaluation.greedy else [])
    for mode, temperature in modes:
        samples, scores, texts = sample_and_score(
            engine, rewards, tokenizer, rows, prompts, n=1, cfg=cfg, seed=cfg.seed + 17, temperature=temperature
        )
        check_reward_failures(scores, cfg.max_reward_failure_rate, f"evaluation ({mode})")
        ok = torch.isfinite(scores.total)
        metrics[f"{mode}_reward"] = float(scores.total[ok].mean()) if ok.any() else math.nan
        metrics[f"{mode}_scored"] = float(ok.sum())
        for k, i in enumerate(samples.prompt_index):
            records.append(
                {
                    "mode": mode,
                    "id": rows[i].get("id"),
                    "ground_truth": rows[i].get("ground_truth"),
                    "completion": texts[k],
                    "reward": None if not ok[k] else float(scores.total[k]),
                }
            )
    if out_path is not None:
        out_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def run_rpo(config: RecipeConfig) -> RPOResult:
    """Run (or resume) RPO / DPO; every rank of the run calls it.

    Raises:
        RecipeValidationError: A config the shared validation rejects (before any work).
        RPOConfigError: ``task`` is not ``rpo``.
    """
    from nemotron_plugins.launch.recipe_config import resolve_paths
    from nemotron_plugins.launch.validation import validate_for_run
    from nemotron_plugins.runtime.distributed import ensure_distributed

    if getattr(config, "task", None) != "rpo":
        raise RPOConfigError(f"task: run_rpo needs task='rpo', got {getattr(config, 'task', None)!r}")
    resolve_paths(config)
    validate_for_run(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    with ensure_distributed(config.parallel, seed=config.seed):
        return _run(config)


def _run(cfg: RecipeConfig) -> RPOResult:  # noqa: C901, PLR0912, PLR0915 - one linear training procedure
    from megatron.core import parallel_state as ps

    from nemotron_plugins.preference.data import prompt_ids, read_preference_pairs
    from nemotron_plugins.preference.pairs import collate_pairs, encode_pairs, epoch_order, step_width
    from nemotron_plugins.training.checkpointing import latest_checkpoint, load_checkpoint
    from nemotron_plugins.training.setup import (
        build_model,
        build_optimizer,
        build_scheduler,
        initialise_weights,
        load_architecture,
        load_run_tokenizer,
        run_metrics_logger,
        save_run_checkpoint,
        write_checkpoint_metadata,
    )
    from nemotron_plugins.training.step import optimizer_step

    rank = world_rank()[1]
    say = print if rank == 0 else (lambda *a, **k: None)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    pref = cfg.preference
    online = pref.mode == "online"
    out_dir = Path(cfg.output_dir or os.path.join("runs", cfg.name))

    tokenizer = load_run_tokenizer(cfg)
    vocab = len(tokenizer)
    arch = load_architecture(cfg)
    if arch.vocab_size < vocab:
        raise RPOConfigError(f"model: vocab_size {arch.vocab_size} is smaller than the tokenizer's {vocab} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    template = cfg.data.chat_template
    save_dir = cfg.checkpoint.save_dir
    load_dir = cfg.checkpoint.load_dir or save_dir
    resuming = bool(load_dir and latest_checkpoint(load_dir) is not None)

    model = build_model(cfg, arch)
    source = initialise_weights(cfg, model, arch)  # also the reference's weights: the run's starting point
    ref_model = build_model(cfg, arch)
    ref_model.load_state_dict(model.state_dict(), strict=True)
    ref_model.eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    ddp, optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    start_step = 0
    if resuming:
        if not cfg.checkpoint.resume:
            raise RPOConfigError(f"checkpoint.resume=false but {load_dir} holds checkpoints")
        loaded = load_checkpoint(load_dir, model=[ddp], optimizer=optimizer, scheduler=scheduler)
        start_step = int(loaded["step"])
        say(f"[rpo] resumed from {loaded['path']} at step {start_step}", flush=True)
    if save_dir and rank == 0:
        write_checkpoint_metadata(save_dir, arch, tokenizer)

    # ---- data
    ev = cfg.evaluation
    rewards: Any = None
    engine: Any = None
    EMBEDDED_ENGINES: tuple[str, ...] = ()
    if online:
        from nemotron_plugins.data.sources import read_prompt_rows
        from nemotron_plugins.rl.controller import build_rewards
        from nemotron_plugins.rl.generation import EMBEDDED_ENGINES, build_engine

        train_rows = read_prompt_rows(cfg.data.path, splits=[], reasoning="both", limit=cfg.data.num_train_samples)
        eval_rows = (
            read_prompt_rows(cfg.data.eval_path, splits=[], reasoning="both", limit=ev.num_samples)
            if ev.num_samples and cfg.data.eval_path
            else []
        )
        # Prompts longer than data.max_seq_length are dropped and counted (as the RL trainer does).
        limit = cfg.data.max_seq_length
        encoded = [(r, prompt_ids(tokenizer, r["messages"], template)) for r in train_rows]
        train_rows = [r for r, p in encoded if len(p) <= limit]
        encoded_eval = [(r, prompt_ids(tokenizer, r["messages"], template)) for r in eval_rows]
        eval_rows = [r for r, p in encoded_eval if len(p) <= limit]
        eval_prompts = [p for _, p in encoded_eval if len(p) <= limit]
        too_long = len(encoded) - len(train_rows) + len(encoded_eval) - len(eval_rows)
        if not train_rows:
            raise RPOConfigError(f"data.path: no prompt of {cfg.data.path} fits data.max_seq_length={limit}")
        rewards = build_rewards(cfg)
        engine = build_engine(cfg, model, arch, tokenizer)
        train_items: Sequence[Any] = train_rows
        say(
            f"[rpo] online: {len(train_rows)} prompts from {cfg.data.path}, {len(eval_rows)} held-out ({too_long} "
            f"longer than data.max_seq_length dropped); rewards "
            f"{list(rewards)}; weights: {source}",
            flush=True,
        )
    else:
        pairs_, dropped = encode_pairs(
            read_preference_pairs(cfg.data.path, need_rewards=pref.loss != "dpo", limit=cfg.data.num_train_samples),
            tokenizer,
            template,
            cfg.data.max_seq_length,
        )
        eval_pairs: list[EncodedPair] = []
        if ev.num_samples and cfg.data.eval_path:
            eval_pairs, _ = encode_pairs(
                read_preference_pairs(
                    cfg.data.eval_path, field="data.eval_path", need_rewards=pref.loss != "dpo", limit=ev.num_samples
                ),
                tokenizer,
                template,
                cfg.data.max_seq_length,
            )
        if not pairs_:
            raise RPOConfigError(f"data.path: no pair of {cfg.data.path} fits data.max_seq_length")
        train_items = pairs_
        say(
            f"[rpo] offline {pref.loss}: {len(pairs_)} pairs from {cfg.data.path} ({dropped} too long, dropped), "
            f"{len(eval_pairs)} held-out; weights: {source}",
            flush=True,
        )

    def evaluate(tag: str) -> dict[str, float]:
        if online:
            out = out_dir / f"eval_{tag}.jsonl" if rank == 0 else None
            if out is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
            return evaluate_online(engine, rewards, tokenizer, eval_rows, eval_prompts, cfg, out)
        return evaluate_offline(model, ref_model, eval_pairs, cfg, pad_id, vocab)

    has_eval = bool(eval_rows if online else eval_pairs)
    result = RPOResult(start_step=start_step, steps_done=start_step)
    if has_eval and ev.at_start and start_step == 0:
        result.eval_before = evaluate("before")
        say(f"[rpo] before training: held-out {_fmt(result.eval_before)}", flush=True)

    def save(step: int) -> None:
        save_run_checkpoint(cfg, step, ddp=ddp, optimizer=optimizer, scheduler=scheduler, arch=arch)

    gbs, micro = cfg.global_batch_size, cfg.micro_batch_size
    end_step = cfg.stop_after_steps or cfg.train_steps
    log = run_metrics_logger(cfg, resume_step=start_step, progress_keys=["loss", "reward_gap"])
    ddp.train()
    t_step = time.perf_counter()
    try:
        for step in range(start_step, end_step):
            order = epoch_order(len(train_items), step, gbs, cfg.seed)
            metrics: dict[str, float] = {}
            if online:
                from nemotron_plugins.rl.controller import check_reward_failures, reward_failure_metrics
                from nemotron_plugins.rl.generation import mix_seed

                rows = [train_items[i] for i in order]
                prompts = [prompt_ids(tokenizer, r["messages"], template) for r in rows]
                samples, scores, _ = sample_and_score(
                    engine,
                    rewards,
                    tokenizer,
                    rows,
                    prompts,
                    n=pref.num_generations,
                    cfg=cfg,
                    seed=mix_seed(cfg.seed, step),
                )
                check_reward_failures(scores, cfg.max_reward_failure_rate, f"step {step + 1}")
                step_pairs, skipped = online_pairs(samples, scores, prompts)
                result.skipped_prompts += skipped
                ok = torch.isfinite(scores.total)
                metrics.update(reward_failure_metrics(scores))
                metrics.update(
                    {
                        "reward_mean": float(scores.total[ok].mean()) if ok.any() else math.nan,
                        "skipped_prompts": float(skipped),
                    }
                )
            else:
                step_pairs = [train_items[i] for i in order]
            # Pairs split over DP replicas (replica r takes pairs r, r + dp, ...), padded to whole micro-batches.
            n_pairs = len(step_pairs)
            if n_pairs == 0:
                say(f"[rpo] step {step + 1}: no pair with different rewards; no update", flush=True)
                result.steps_done = step + 1
                continue
            width = step_width(step_pairs)
            mine = step_pairs[dp_rank::dp]
            micro_batches = [collate_pairs(mine[i : i + micro], width, pad_id) for i in range(0, len(mine), micro)]
            # Every replica runs the same number of micro-batches (the schedule's collectives must match).
            per_rank = -(-n_pairs // dp)
            while len(micro_batches) < -(-per_rank // micro):
                filler = collate_pairs(step_pairs[:1], width, pad_id)
                filler["reply_mask"].zero_()
                filler["weight"] = 0.0
                micro_batches.append(filler)
            reference_logps(ref_model, micro_batches, width, micro, vocab)

            def forward_step(
                data_iterator: Iterator[dict[str, Any]], model_: Any, n_pairs: int = n_pairs
            ) -> tuple[Any, Any]:
                mb = next(data_iterator)
                out = _forward(model_, mb)

                def loss_func(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    losses, h = pair_loss(_sequence_logps(output, mb, vocab), mb, cfg)
                    weight = mb.get("weight", 1.0)
                    total = losses.sum() * weight
                    report = {
                        "loss_sum": total.detach(),
                        "h_sum": (h.sum() * weight).detach(),
                        "h_pos": ((h > 0).float().sum() * weight).detach(),
                    }
                    return total / n_pairs, torch.tensor(losses.numel()), report

                return out, loss_func

            stepped = optimizer_step(
                [ddp], optimizer, scheduler, micro_batches, forward_step, seq_length=width, micro_batch_size=2 * micro
            )
            if online and cfg.generation.engine not in EMBEDDED_ENGINES:
                engine.update_weights(model=model)  # vLLM: the updated policy's weights before the next rollout
            sums = torch.zeros(3, dtype=torch.float64)
            if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
                for rep in stepped.reports:
                    sums += torch.tensor([float(rep["loss_sum"]), float(rep["h_sum"]), float(rep["h_pos"])])
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(sums)
            loss = float(sums[0]) / n_pairs
            done = step + 1
            result.losses[done] = loss
            result.steps_done = done
            gaps = [p.chosen_reward - p.rejected_reward for p in step_pairs]
            now = time.perf_counter()
            metrics.update(
                {
                    "loss": loss,
                    "implicit_gap": float(sums[1]) / n_pairs,
                    "implicit_accuracy": float(sums[2]) / n_pairs,
                    "reward_gap": sum(gaps) / len(gaps) if pref.loss != "dpo" else math.nan,
                    "pairs": float(n_pairs),
                    "lr": stepped.lr,
                    "grad_norm": stepped.grad_norm,
                    "step_time": now - t_step,
                }
            )
            log.log(done, metrics)
            t_step = now
            if done % cfg.logging.log_interval == 0 or done == start_step + 1 or done == end_step:
                extra = f"  reward {metrics['reward_mean']:.3f}" if online else ""
                say(
                    f"[rpo] step {done:5d}/{cfg.train_steps}  loss {loss:.4f}  pairs {n_pairs}  implicit gap "
                    f"{metrics['implicit_gap']:+.4f}{extra}  lr {stepped.lr:.2e}  grad_norm {stepped.grad_norm:.3f}",
                    flush=True,
                )
            if cfg.checkpoint.save_interval and done % cfg.checkpoint.save_interval == 0 and done != end_step:
                save(done)
            if ev.interval and has_eval and done % ev.interval == 0 and done < end_step:
                interim = evaluate(f"step{done}")
                log.log(done, {f"eval/{k}": v for k, v in interim.items()})
                say(f"[rpo] step {done}: held-out {_fmt(interim)}", flush=True)
    finally:
        log.close()
    if result.steps_done > start_step or (save_dir and latest_checkpoint(save_dir) is None):
        save(result.steps_done)
    if has_eval and result.steps_done >= cfg.train_steps:
        result.eval = evaluate("after")
        say(f"[rpo] after training: held-out {_fmt(result.eval)}", flush=True)
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "report.json").write_text(
                json.dumps(
                    {
                        "eval_before": result.eval_before,
                        "eval": result.eval,
                        "steps": result.steps_done,
                        "skipped_prompts": result.skipped_prompts,
                    },
                    indent=2,
                ),
                encoding="utf-8",
            )
    if engine is not None:
        engine.close()
    if rewards:
        for _, reward in rewards.values():
            reward.close()
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{k} {v:g}"
        for k, v in metrics.items()
    )
