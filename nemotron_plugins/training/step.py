"""One optimizer step on megatron's schedules, shared by every trainer (SFT, GRPO / RLOO, distillation).

The caller supplies the micro-batches of this data-parallel rank and a megatron ``forward_step_func`` whose loss is
already normalised by the GLOBAL batch (``calculate_per_token_loss``: megatron neither rescales nor averages it);
this module runs the forward / backward schedule (no pipelining at PP=1, 1F1B otherwise), reduces gradients over
data-parallel replicas and finalises sequence-parallel norms and tied embeddings (``finalize_model_grads``), clips
and steps megatron's optimizer and advances the LR scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class NonFiniteGradientError(RuntimeError):
    """The optimizer skipped a step because gradients were not finite."""


@dataclass(kw_only=True, slots=True)
class StepResult:
    """What :func:`optimizer_step` returns."""

    reports: list[Any] = field(default_factory=list)
    """The third element of each micro-batch's ``loss_func`` return, in order (last pipeline stage only)."""
    grad_norm: float = 0.0
    """Global gradient norm before clipping (over all model-parallel ranks)."""
    lr: float = 0.0
    """The learning rate this step used."""


def run_schedule(
    model_chunks: Sequence[Any],
    micro_batches: Sequence[Any],
    forward_step: Callable[..., Any],
    *,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool,
) -> list[Any]:
    """Run megatron's forward(-backward) schedule over ``micro_batches``; the micro-batch reports (last stage)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        return []
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=list(model_chunks),
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def optimizer_step(
    model_chunks: Sequence[Any],
    optimizer: Any,
    scheduler: Any | None,
    micro_batches: Sequence[Any],
    forward_step: Callable[..., Any],
    *,
    seq_length: int,
    micro_batch_size: int,
) -> StepResult:
    """One optimizer step: zero grads, forward/backward every micro-batch, reduce, clip, step, advance the LR.

    Args:
        model_chunks: The DDP-wrapped model chunks (:func:`nemotron_plugins.training.setup.build_optimizer`).
        optimizer: megatron's optimizer over them (clips to ``optimizer.clip_grad`` inside ``step``).
        scheduler: megatron's ``OptimizerParamScheduler`` (``None``: constant LR).
        micro_batches: This data-parallel rank's micro-batches.
        forward_step: megatron ``forward_step_func(data_iterator, model) -> (output, loss_func)``.
        seq_length: Sequence length of the micro-batches (pipeline P2P buffers).
        micro_batch_size: Rows per micro-batch.

    Returns:
        The micro-batch reports, gradient norm and the LR used.

    Raises:
        NonFiniteGradientError: When megatron's optimizer refuses the step (non-finite gradients).
    """
    from megatron.core.distributed import finalize_model_grads

    lr = float(optimizer.param_groups[0]["lr"])
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_schedule(
        model_chunks,
        micro_batches,
        forward_step,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    finalize_model_grads(list(model_chunks))
    ok, grad_norm, _ = optimizer.step()
    if not ok:
        raise NonFiniteGradientError(
            "the optimizer step was skipped: gradients are not finite (lower optimizer.lr, check the data, or "
            "raise optimizer.clip_grad's strictness)"
        )
    if scheduler is not None:
        scheduler.step(increment=1)
    return StepResult(reports=list(reports), grad_norm=float(grad_norm) if grad_norm is not None else 0.0, lr=lr)


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s parameters (CPU when it has none)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
