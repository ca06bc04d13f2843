"""Train a reward model (``task="reward_model"``) with the Bradley-Terry loss on preference pairs.

:func:`run_reward_model` reads the run config directly: the backbone, its starting weights (``init_checkpoint``: the
policy; or ``model.checkpoint`` / random), megatron DDP + optimizer + LR scheduler come from the shared training
stack (:mod:`nemotron_plugins.training.setup`), each step is one :func:`~nemotron_plugins.training.step.optimizer_step`
on megatron's schedules, and checkpoints are the project's distributed checkpoints (model with its head, optimizer,
scheduler; atomic; exact resume), with the architecture and tokenizer beside them so the ``megatron_reward_model``
reward can load the model.

Data: ``data.path`` (training pairs) and ``data.eval_path`` (held-out pairs), HelpSteer-style JSONL
(:mod:`nemotron_plugins.preference.data`). ``global_batch_size`` pairs per step, ``micro_batch_size`` pairs per
micro-batch; the loss is the mean over the global batch of ``-log sigmoid(r_c - r_r [- margin])``. Evaluation:
held-out pair accuracy (``r_c > r_r``) over ``evaluation.num_samples`` pairs before (``evaluation.at_start``), every
``evaluation.interval`` steps and after training.
"""

from __future__ import annotations

import logging
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


class RewardModelConfigError(ValueError):
    """The run config cannot train a reward model; the message names the field."""


@dataclass(kw_only=True, slots=True)
class RewardModelResult:
    """What :func:`run_reward_model` returns (every rank)."""

    losses: dict[int, float] = field(default_factory=dict)
    """Mean Bradley-Terry loss per step run by this call."""
    steps_done: int = 0
    """Completed steps."""
    start_step: int = 0
    """Steps done before this call (resume)."""
    eval_before: dict[str, float] | None = None
    """Held-out metrics before training (``accuracy``, ``loss``, ``pairs``)."""
    eval: dict[str, float] | None = None
    """Held-out metrics after training."""
    checkpoint_dir: str | None = None
    """Where the model was saved."""


def build_reward_model(config: RecipeConfig, *, initialise: bool) -> tuple[Any, Any, Any, str]:
    """``(RewardModel, architecture, tokenizer, weight source)`` for this rank through the shared training stack;
    with ``initialise`` the backbone gets the run's starting weights (``init_checkpoint`` / ``model.checkpoint`` /
    random) before the head is added."""
    from nemotron_plugins.reward_model.model import RewardModel
    from nemotron_plugins.training.setup import build_model, initialise_weights, load_architecture, load_run_tokenizer

    tokenizer = load_run_tokenizer(config)
    arch = load_architecture(config)
    if arch.vocab_size < len(tokenizer):
        raise RewardModelConfigError(
            f"model: vocab_size {arch.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
        )
    backbone = build_model(config, arch)
    source = initialise_weights(config, backbone, arch) if initialise else "checkpoint (resume)"
    return RewardModel(backbone, seed=config.seed), arch, tokenizer, source


def pair_rewards(model: Any, micro_batches: Sequence[dict[str, Any]], width: int, micro: int) -> list[torch.Tensor]:
    """``[2m]`` last-token rewards of every micro-batch (forward only; last pipeline stage, empty elsewhere)."""
    from nemotron_plugins.reward_model.model import last_token_rewards
    from nemotron_plugins.training.step import run_schedule

    def step_fn(data_iterator: Iterator[dict[str, Any]], model_: Any) -> tuple[torch.Tensor, Any]:
        mb = next(data_iterator)
        device = next(model_.parameters()).device
        out = model_(mb["input_ids"].to(device), mb["position_ids"].to(device), None)

        def loss_func(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            r = last_token_rewards(output, mb["last_index"]).detach().cpu()
            return output.new_zeros(()), torch.tensor(0, dtype=torch.int), {"rewards": r}

        return out, loss_func

    with torch.no_grad():
        reports = run_schedule(
            [model], micro_batches, step_fn, seq_length=width, micro_batch_size=2 * micro, forward_only=True
        )
    return [r["rewards"] for r in reports]


def _broadcast_from_last_stage(values: torch.Tensor) -> torch.Tensor:
    """``values`` of the last pipeline stage on every rank of this pipeline (a no-op at PP=1)."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return values
    torch.distributed.broadcast(
        values, ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return values


def evaluate_pairs(
    model: Any, pairs: Sequence[EncodedPair], *, micro: int, pad_id: int, use_margin: bool = False
) -> dict[str, float]:
    """Held-out ``accuracy`` (share of pairs with ``r_c > r_r``, a tie counting one half: an untrained, zero-initialised
    head scores 0.5), mean Bradley-Terry ``loss`` and the mean reward ``gap`` over ``pairs`` (every rank computes all
    of them; TP ranks together)."""
    from nemotron_plugins.preference.losses import bradley_terry_loss
    from nemotron_plugins.preference.pairs import split_micro_batches

    was_training = model.training
    model.eval()
    try:
        micro_batches, width = split_micro_batches(pairs, micro, pad_id, for_reward_model=True)
        rewards = pair_rewards(model, micro_batches, width, micro)
    finally:
        model.train(was_training)
    stats = torch.zeros(3, dtype=torch.float64)
    for r, mb in zip(rewards, micro_batches, strict=False):
        m = r.numel() // 2
        chosen, rejected = r[:m].double(), r[m:].double()
        margin = mb["margin"].double() if use_margin else None
        stats += torch.stack(
            [
                (chosen > rejected).double().sum() + 0.5 * (chosen == rejected).double().sum(),
                bradley_terry_loss(chosen, rejected, margin).sum(),
                (chosen - rejected).sum(),
            ]
        )
    stats = _broadcast_from_last_stage(stats)
    n = len(pairs)
    return {"accuracy": float(stats[0]) / n, "loss": float(stats[1]) / n, "gap": float(stats[2]) / n, "pairs": n}


def run_reward_model(config: RecipeConfig) -> RewardModelResult:
    """Train (or resume) a reward model; every rank of the run calls it.

    Raises:
        RecipeValidationError: A config the shared validation rejects (before any work).
        RewardModelConfigError: ``task`` is not ``reward_model``.
    """
    from nemotron_plugins.launch.recipe_config import resolve_paths
    from nemotron_plugins.launch.validation import validate_for_run
    from nemotron_plugins.runtime.distributed import ensure_distributed

    if getattr(config, "task", None) != "reward_model":
        raise RewardModelConfigError(f"task: run_reward_model needs task='reward_model', got {config.task!r}")
    resolve_paths(config)
    validate_for_run(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    with ensure_distributed(config.parallel, seed=config.seed):
        return _run(config)


def _run(cfg: RecipeConfig) -> RewardModelResult:  # noqa: PLR0915 - one linear training procedure
    from megatron.core import parallel_state as ps

    from nemotron_plugins.preference.data import read_preference_pairs
    from nemotron_plugins.preference.losses import bradley_terry_loss
    from nemotron_plugins.preference.pairs import encode_pairs, epoch_order, split_micro_batches
    from nemotron_plugins.reward_model.model import last_token_rewards
    from nemotron_plugins.training.checkpointing import latest_checkpoint, load_checkpoint
    from nemotron_plugins.training.setup import (
        build_optimizer,
        build_scheduler,
        run_metrics_logger,
        save_run_checkpoint,
        write_checkpoint_metadata,
    )
    from nemotron_plugins.training.step import optimizer_step

    rank = world_rank()[1]
    say = print if rank == 0 else (lambda *a, **k: None)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    pref = cfg.preference
    use_margin = bool(pref.use_margin) if pref is not None else False

    save_dir = cfg.checkpoint.save_dir
    load_dir = cfg.checkpoint.load_dir or save_dir
    resuming = bool(load_dir and latest_checkpoint(load_dir) is not None)
    model, arch, tokenizer, source = build_reward_model(cfg, initialise=not resuming)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    template = cfg.data.chat_template

    train_pairs, dropped = encode_pairs(
        read_preference_pairs(cfg.data.path, limit=cfg.data.num_train_samples),
        tokenizer,
        template,
        cfg.data.max_seq_length,
    )
    if not train_pairs:
        raise RewardModelConfigError(f"data.path: no pair of {cfg.data.path} fits data.max_seq_length")
    eval_pairs: list[Any] = []
    if cfg.evaluation.num_samples and cfg.data.eval_path:
        eval_pairs, _ = encode_pairs(
            read_preference_pairs(cfg.data.eval_path, field="data.eval_path", limit=cfg.evaluation.num_samples),
            tokenizer,
            template,
            cfg.data.max_seq_length,
        )
    say(
        f"[reward_model] {len(train_pairs)} training pairs from {cfg.data.path} ({dropped} longer than "
        f"data.max_seq_length={cfg.data.max_seq_length} dropped), {len(eval_pairs)} held-out pairs; weights: {source}",
        flush=True,
    )

    ddp, optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    start_step = 0
    if resuming:
        if not cfg.checkpoint.resume:
            raise RewardModelConfigError(f"checkpoint.resume=false but {load_dir} holds checkpoints")
        loaded = load_checkpoint(load_dir, model=[ddp], optimizer=optimizer, scheduler=scheduler)
        start_step = int(loaded["step"])
        say(f"[reward_model] resumed from {loaded['path']} at step {start_step}", flush=True)
    if save_dir and rank == 0:
        write_checkpoint_metadata(save_dir, arch, tokenizer)

    def save(step: int) -> None:
        save_run_checkpoint(cfg, step, ddp=ddp, optimizer=optimizer, scheduler=scheduler, arch=arch, head="scalar")

    result = RewardModelResult(start_step=start_step, steps_done=start_step, checkpoint_dir=save_dir)
    micro = cfg.micro_batch_size
    ev = cfg.evaluation
    if eval_pairs and ev.at_start and start_step == 0:
        result.eval_before = evaluate_pairs(model, eval_pairs, micro=micro, pad_id=pad_id, use_margin=use_margin)
        say(f"[reward_model] before training: held-out {_fmt(result.eval_before)}", flush=True)

    gbs = cfg.global_batch_size
    per_rank = gbs // dp
    end_step = cfg.stop_after_steps or cfg.train_steps
    log = run_metrics_logger(cfg, resume_step=start_step, progress_keys=["loss", "accuracy"])
    ddp.train()
    t_step = time.perf_counter()
    try:
        for step in range(start_step, end_step):
            order = epoch_order(len(train_pairs), step, gbs, cfg.seed)
            step_pairs = [train_pairs[i] for i in order]
            # One width for the whole global batch (identical on every rank: pipeline shapes agree).
            _, width = split_micro_batches(step_pairs, micro, pad_id, for_reward_model=True)
            mine = step_pairs[dp_rank * per_rank : (dp_rank + 1) * per_rank]
            from nemotron_plugins.preference.pairs import reward_micro_batch

            micro_batches = [reward_micro_batch(mine[i : i + micro], width, pad_id) for i in range(0, per_rank, micro)]

            def forward_step(data_iterator: Iterator[dict[str, Any]], model_: Any) -> tuple[Any, Any]:
                mb = next(data_iterator)
                device = next(model_.parameters()).device
                out = model_(mb["input_ids"].to(device), mb["position_ids"].to(device), None)

                def loss_func(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    r = last_token_rewards(output, mb["last_index"])
                    m = r.numel() // 2
                    margin = mb["margin"].to(r.device) if use_margin else None
                    losses = bradley_terry_loss(r[:m], r[m:], margin)
                    correct = ((r[:m] > r[m:]).float().sum() + 0.5 * (r[:m] == r[m:]).float().sum()).detach()
                    # Normalised by the GLOBAL batch's pairs: DDP sums the replicas' gradients.
                    return losses.sum() / gbs, torch.tensor(m), {"loss_sum": losses.sum().detach(), "correct": correct}

                return out, loss_func

            stepped = optimizer_step(
                [ddp], optimizer, scheduler, micro_batches, forward_step, seq_length=width, micro_batch_size=2 * micro
            )
            sums = torch.zeros(2, dtype=torch.float64)
            if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
                for rep in stepped.reports:
                    sums += torch.tensor([float(rep["loss_sum"]), float(rep["correct"])], dtype=torch.float64)
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(sums)
            loss, accuracy = float(sums[0]) / gbs, float(sums[1]) / gbs
            done = step + 1
            result.losses[done] = loss
            result.steps_done = done
            now = time.perf_counter()
            log.log(
                done,
                {
                    "loss": loss,
                    "accuracy": accuracy,
                    "lr": stepped.lr,
                    "grad_norm": stepped.grad_norm,
                    "step_time": now - t_step,
                },
            )
            t_step = now
            if done % cfg.logging.log_interval == 0 or done == start_step + 1 or done == end_step:
                say(
                    f"[reward_model] step {done:5d}/{cfg.train_steps}  loss {loss:.4f}  train acc {accuracy:.3f}  "
                    f"lr {stepped.lr:.2e}  grad_norm {stepped.grad_norm:.3f}",
                    flush=True,
                )
            if cfg.checkpoint.save_interval and done % cfg.checkpoint.save_interval == 0 and done != end_step:
                save(done)
            if ev.interval and eval_pairs and done % ev.interval == 0 and done < end_step:
                metrics = evaluate_pairs(model, eval_pairs, micro=micro, pad_id=pad_id, use_margin=use_margin)
                log.log(done, {f"eval/{k}": v for k, v in metrics.items()})
                say(f"[reward_model] step {done}: held-out {_fmt(metrics)}", flush=True)
    finally:
        log.close()
    if result.steps_done > start_step or (save_dir and latest_checkpoint(save_dir) is None):
        save(result.steps_done)
    if eval_pairs and result.steps_done >= cfg.train_steps:
        result.eval = evaluate_pairs(model, eval_pairs, micro=micro, pad_id=pad_id, use_margin=use_margin)
        say(f"[reward_model] after training: held-out {_fmt(result.eval)}", flush=True)
        if rank == 0:
            _report(result, Path(cfg.output_dir or os.path.join("runs", cfg.name)))
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return (
        f"pair accuracy {metrics['accuracy']:.3f} (n={int(metrics['pairs'])}), BT loss {metrics['loss']:.4f}, "
        f"mean gap {metrics['gap']:.3f}"
    )


def _report(result: RewardModelResult, out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps({"eval_before": result.eval_before, "eval": result.eval, "steps": result.steps_done}, indent=2),
        encoding="utf-8",
    )
