"""The policy worker: the Megatron policy's log-probs and updates at its own TP / PP / CP / DP layout.

The controller (:mod:`nemotron_plugins.rl.controller`) hands it a :class:`PolicyBatch` (the rollout's kept samples,
identical on every rank) and gets metrics back; nothing Megatron crosses that line. :class:`MegatronPolicyWorker`
owns the ``GPTModel`` (megatron DDP + megatron optimizer + LR scheduler through the shared training stack,
:mod:`nemotron_plugins.training`), the frozen reference policy when ``algorithm.beta > 0``, and its checkpoints.

The update (:func:`policy_update`): the samples are split into ``updates_per_rollout / epochs_per_rollout`` global
batches, each run once per epoch; a global batch is split over the data-parallel replicas (replica r takes rows
r, r + dp, ...), cut into micro-batches of ``micro_batch_size`` sequences that are packed into one row each on
CUDA (:func:`plan_micro_batches`, megatron ``PackedSeqParams``; on CPU padded to each micro-batch's own longest
row) and run through megatron's ``forward_backward_func``
with the clipped loss, each micro-batch's loss divided by the GLOBAL batch's token count.

With context parallelism (CP > 1) the CP ranks of a replica take the same rows and each feeds the model its share of
every sequence (megatron's load-balanced chunks, cut after the next-token shift); log-probs return to the full-length
loss layout, where each rank's mask keeps its own tokens, so per-token terms stay local, token-level normalisers are
the CP1 ones and sequence-level ones are reduced over CP (:mod:`nemotron_plugins.rl.loss`); DDP sums the gradients
over DP x CP. :func:`policy_logprobs` gathers per-token log-probs back into the batch's token order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig

logger = logging.getLogger(__name__)


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


# Loss metrics averaged over tokens (weights: completion tokens) and reduced over all ranks.
_TOKEN_METRICS = (
    "pg_loss",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "dual_clip_fraction",
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
    prompt_lengths: torch.Tensor | None = None
    """``[N]`` prompt tokens of each row (rows with equal prompts can share one prompt forward, see
    :mod:`nemotron_plugins.rl.shared_prompt`); ``None``: unknown, every row runs on its own."""

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
        prompt_lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
    )


@dataclass(kw_only=True, slots=True)
class UpdatePlan:
    """The micro-batches of one global batch on this data-parallel rank, and the shapes megatron's schedule needs."""

    micro_batches: list[dict[str, Any]]
    """Per micro-batch: the model inputs (``input_ids``, ``position_ids``, ``packed_seq_params`` when packed; this
    rank's share of the sequence under context parallelism), the targets at the model's output positions
    (``model_targets``), where the output positions go in the loss layout (``place``, absent when they are that
    layout already), and the loss tensors in the loss layout, ``[m, w]`` with ``w`` the micro-batch's own longest
    row (``targets``, ``mask``: only this CP rank's completion tokens, ``advantages``, ``generator_logprobs``)."""
    seq_length: int
    """Sequence length of every micro-batch's model input before the CP split (pipeline communication shape)."""
    micro_batch_size: int
    """Rows of every micro-batch's model input (1 when packed)."""
    fed_tokens: int
    """Positions run through the model by the whole CP group, padding included."""


def _place_rows(mb: dict[str, Any], rows: torch.Tensor, cols: torch.Tensor, src: torch.Tensor) -> None:
    """Record that the model's (flattened) output positions ``src`` are tokens ``(rows, cols)`` of the ``[m, w]``
    loss layout, and keep only those tokens in the loss mask (the ones this CP rank computes)."""
    mb["place"] = (rows, cols, src)
    here = torch.zeros_like(mb["mask"])
    here[rows, cols] = 1.0
    mb["mask"] = mb["mask"] * here


def plan_micro_batches(
    batch: PolicyBatch,
    rows: torch.Tensor,
    micro: int,
    *,
    pack: bool,
    uniform: bool,
    multiple: int = 8,
    context_parallel: tuple[int, int] = (0, 1),
    share_prompts: str = "off",
    hidden_size: int = 0,
) -> UpdatePlan:
    """Cut ``rows`` of ``batch`` into micro-batches of ``micro`` sequences.

    With ``pack`` the sequences of a micro-batch are concatenated into one ``[1, T]`` row whose boundaries reach
    attention as megatron ``PackedSeqParams`` (each sequence attends only to itself and its positions restart at
    0), so no padding is computed except the rounding of ``T`` up to ``multiple``; without it each micro-batch is
    padded to its own longest row (not the rollout's). With ``uniform`` (pipeline parallelism: one communication
    shape) every micro-batch is padded to the plan's longest, and unpacked ones to ``micro`` rows (extra rows fully
    masked).

    With context parallelism (``context_parallel = (cp_rank, cp_size)``, ``cp_size > 1``; ``multiple`` is raised to
    a multiple of ``2 * cp_size``) the targets, masks and log-probs are built at full length first and only the
    model inputs are cut, in megatron's load-balanced layout (:mod:`nemotron_plugins.puzzle.context_parallel`):
    unpacked rows into ``2 * cp_size`` chunks, keeping chunks ``cp_rank`` and ``2 * cp_size - 1 - cp_rank``;
    packed rows with every sequence padded to a multiple of ``2 * cp_size`` and cut on its own (megatron's ``thd``
    CP layout, real and padded boundaries in the ``PackedSeqParams``). The micro-batch's ``mask`` then marks only
    this rank's completion tokens, and ``place`` says where its log-probs go in the ``[m, w]`` loss layout.

    ``share_prompts`` (unpacked, not ``uniform``, no context parallelism; the caller checks): ``"on"`` runs every
    micro-batch in the shared-prompt layout (one row per group of rows with the same prompt, see
    :mod:`nemotron_plugins.rl.shared_prompt`; its ``gather`` says which output position predicts each loss token),
    ``"auto"`` those where :func:`~nemotron_plugins.rl.shared_prompt.layout_cost` (with ``hidden_size``) is lower
    than the padded layout's, ``"off"`` none.
    """
    from nemotron_plugins.puzzle.attention import packed_seq_params_from_segment_ids
    from nemotron_plugins.puzzle.context_parallel import (
        local_positions,
        split_batch_for_context_parallel,
        split_packed_batch_for_context_parallel,
    )
    from nemotron_plugins.rl.shared_prompt import layout_cost, shared_prompt_layout, shared_prompt_shape

    cp_rank, cp = context_parallel
    if cp > 1:
        multiple = math.lcm(multiple, 2 * cp)

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
            mb["model_targets"] = batch.targets[src, cols].unsqueeze(0)
            mb["position_ids"] = cols.unsqueeze(0)
        else:
            mb["input_ids"] = batch.input_ids[idx, :w]
        out.append(mb)
    if pack:
        if cp > 1:  # every sequence padded to a multiple of 2 * cp
            step = 2 * cp
            lengths = [int(((batch.lengths[mb["rows"]] + step - 1) // step * step).sum()) for mb in out]
        else:
            lengths = [int(mb["input_ids"].shape[1]) for mb in out]
        length = max((up(n) for n in lengths), default=0) if uniform else None
        for mb, n in zip(out, lengths, strict=True):
            target = length if length is not None else up(n)
            seg, cols = mb.pop("unpack")
            real = int(seg.numel())
            if cp > 1:
                lens = batch.lengths[mb["rows"]]
                cu = torch.cat([lens.new_zeros(1), torch.cumsum(lens, 0)])
                local, params = split_packed_batch_for_context_parallel(
                    {
                        "input_ids": mb["input_ids"],
                        "model_targets": mb["model_targets"],
                        "position_ids": mb["position_ids"],
                        "source": torch.arange(real).unsqueeze(0),
                    },
                    cu,
                    cp_rank,
                    cp,
                    length=target,
                    pad_values={"source": -1},
                )
                source = local.pop("source")[0]
                mb.update(local)
                mb["packed_seq_params"] = params
                kept = torch.nonzero(source >= 0).flatten()
                _place_rows(mb, seg[source[kept]], cols[source[kept]], kept)
                continue
            extra = target - real
            segments = torch.cat([seg, torch.full((extra,), -1, dtype=torch.long)]).unsqueeze(0)
            for key in ("input_ids", "model_targets", "position_ids"):
                mb[key] = torch.cat([mb[key], mb[key].new_zeros(1, extra)], dim=1)
            mb["packed_seq_params"] = packed_seq_params_from_segment_ids(segments)
            mb["place"] = (seg, cols, torch.arange(real))
        fed = sum(length if length is not None else up(n) for n in lengths)
        seq_length = max((length if length is not None else up(n) for n in lengths), default=0)
        return UpdatePlan(micro_batches=out, seq_length=seq_length, micro_batch_size=1, fed_tokens=fed)
    width = max((int(mb["input_ids"].shape[1]) for mb in out), default=0)
    fed = 0
    for mb in out:
        w = up(width) if uniform else up(int(mb["input_ids"].shape[1]))
        missing_rows = micro - mb["rows"].numel() if uniform else 0
        for key in ("input_ids", "targets", "mask", "generator_logprobs"):
            t = mb[key]
            mb[key] = torch.nn.functional.pad(t, (0, w - t.shape[1], 0, missing_rows))
        if missing_rows:
            mb["advantages"] = torch.cat([mb["advantages"], mb["advantages"].new_zeros(missing_rows)])
        n, w = mb["input_ids"].shape
        auto = share_prompts == "auto" and batch.prompt_lengths is not None  # unknown prompts: nothing to share
        if (share_prompts == "on" or auto) and not uniform and cp == 1:
            g, s = shared_prompt_shape(batch, mb["rows"], multiple=multiple)
            if share_prompts == "on" or layout_cost(g, s, hidden_size=hidden_size, dense_mask=True) < layout_cost(
                n, w, hidden_size=hidden_size, dense_mask=False
            ):
                mb.update(shared_prompt_layout(batch, mb["rows"], multiple=multiple))
                fed += g * s
                continue
        fed += n * w
        mb["position_ids"] = torch.arange(w).unsqueeze(0).expand(n, w)
        mb["model_targets"] = mb["targets"]
        if cp > 1:
            keys = ("input_ids", "position_ids", "model_targets")
            mb.update(split_batch_for_context_parallel({k: mb[k] for k in keys}, cp_rank, cp))
            cols = local_positions(w // cp, cp, cp_rank)
            grid_rows = torch.arange(n).repeat_interleave(cols.numel())
            _place_rows(mb, grid_rows, cols.repeat(n), torch.arange(grid_rows.numel()))
    return UpdatePlan(micro_batches=out, seq_length=up(width), micro_batch_size=micro, fed_tokens=fed)


def _forward_micro_batch(model: Any, mb: Mapping[str, Any]) -> torch.Tensor:
    """The model chunk's forward on a micro-batch (causal; packed sequences attend within themselves): logits on
    the last pipeline stage, hidden states elsewhere (megatron's schedule feeds the previous stage's output in)."""
    device = next(model.parameters()).device
    tokens = mb["input_ids"].to(device)
    positions = mb["position_ids"].to(device)
    params = mb.get("packed_seq_params")
    if "attention_mask" in mb:  # shared-prompt layout: explicit mask, RoPE at the given positions
        from nemotron_plugins.rl.shared_prompt import rope_at_positions

        with rope_at_positions(model, positions):
            return model(tokens, positions, mb["attention_mask"].to(device))
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
    """``[m, w]`` log-probs of the micro-batch's targets in the loss layout (unpacked from the packed row when
    packed; 0 at the positions another CP rank computes)."""
    if "gather" in mb:  # shared-prompt layout: one output position can predict several rows' tokens
        rows, cols, src = (t.to(output.device) for t in mb["gather"])
        logits = output.reshape(-1, output.shape[-1])[src].unsqueeze(0)
        targets = mb["targets"].to(output.device)[rows, cols].unsqueeze(0)
        lp = _logprobs(logits, targets, temperature, vocab_size).squeeze(0)
        return lp.new_zeros(tuple(mb["targets"].shape)).index_put((rows, cols), lp)
    lp = _logprobs(output, mb["model_targets"].to(output.device), temperature, vocab_size)
    if "place" not in mb:
        return lp
    rows, cols, src = (t.to(lp.device) for t in mb["place"])
    out = lp.new_zeros(tuple(mb["targets"].shape))
    return out.index_put((rows, cols), lp.reshape(-1)[src])


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


def policy_logprobs(
    model: Any,
    batch: PolicyBatch,
    config: RecipeConfig,
    *,
    vocab_size: int,
    pack: bool | None = None,
) -> torch.Tensor:
    """``[N, W]`` log-probs of ``batch``'s targets under ``model`` (0 past each row's length), on every rank.

    The rows are split over the data-parallel replicas and every sequence over the context-parallel ranks as in
    :func:`policy_update`; each rank's values are put back at their positions and summed over all ranks (only the
    last pipeline stage's TP rank 0 contributes), so the result is in the batch's token order, identical on every
    rank and equal to the single-rank forward.

    Args:
        model: The policy (megatron DDP-wrapped or not) or the reference model.
        batch: The samples (:func:`pack_policy_batch`).
        config: The run config (``micro_batch_size``, ``generation.temperature``, ``parallel``).
        vocab_size: Real vocabulary size.
        pack: Pack micro-batches (``None``: as :func:`policy_update` decides).
    """
    from megatron.core import parallel_state as ps

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    plan = plan_micro_batches(
        batch,
        torch.arange(len(batch))[dp_rank::dp],
        config.micro_batch_size,
        pack=_packs(model, config) if pack is None else pack,
        uniform=ps.get_pipeline_model_parallel_world_size() > 1,
        multiple=_length_multiple(config),
        context_parallel=(ps.get_context_parallel_rank(), ps.get_context_parallel_world_size()),
    )
    module = model.module if hasattr(model, "module") else model
    was_training = module.training
    module.eval()
    try:
        per_mb = _forward_logprobs(model, plan, config.generation.temperature, vocab_size)
    finally:
        module.train(was_training)
    out = torch.zeros(batch.targets.shape, dtype=torch.float64)
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
        for mb, lp in zip(plan.micro_batches, per_mb, strict=True):
            here = torch.ones_like(lp)
            if "place" in mb:
                rows, cols, _ = mb["place"]
                here = torch.zeros_like(lp).index_put((rows, cols), torch.ones(rows.numel()))
            n, w = mb["rows"].numel(), min(lp.shape[1], out.shape[1])
            out[mb["rows"], :w] += (lp * here)[:n, :w].double()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(out)
    real = torch.arange(out.shape[1]).unsqueeze(0) < batch.lengths.unsqueeze(1)
    return (out * real).float()


def _packs(model: Any, config: RecipeConfig) -> bool:
    """Whether the update packs micro-batches: on CUDA with an attention that takes ``PackedSeqParams``.

    Packing needs an attention that runs each packed sequence on its own (TE / FlexAttention / per-document SDPA
    on CUDA); on CPU the SDPA path masks the whole packed row densely (quadratic in its length, measured ~8x slower
    than padding in benchmarks/grpo_step.py), so there each micro-batch is padded to its own longest row instead.
    megatron's local attention takes no PackedSeqParams at all.
    """
    on_cuda = next(model.parameters()).device.type == "cuda"
    return on_cuda and config.model.layer_spec != "puzzle_local"


def _prompt_sharing(model: Any, config: RecipeConfig, *, pack: bool, ref_model: Any = None) -> tuple[str, int]:
    """(``share_prompts`` for :func:`plan_micro_batches`, the model's hidden size) from ``algorithm.prompt_sharing``
    and what this layout allows (``ref_model``, when the loss uses it, runs the same micro-batches, so it must take
    the mask too); ``"on"`` where the shared-prompt layout is impossible raises naming the field."""
    from megatron.core import parallel_state as ps

    from nemotron_plugins.puzzle.model import unwrap_model
    from nemotron_plugins.rl.config import GRPOConfigError
    from nemotron_plugins.rl.shared_prompt import shared_prompt_support

    mode = config.algorithm.prompt_sharing
    hidden = int(getattr(getattr(unwrap_model(model), "config", None), "hidden_size", 0) or 0)
    if mode == "off":
        return "off", hidden
    reasons = []
    if pack:
        reasons.append("micro-batches are packed (thd)")
    if ps.get_pipeline_model_parallel_world_size() > 1:
        reasons.append("pipeline parallelism needs one communication shape per micro-batch")
    if ps.get_context_parallel_world_size() > 1:
        reasons.append("context parallelism")
    why = shared_prompt_support(model)
    if why is not None:
        reasons.append(why)
    why = shared_prompt_support(ref_model) if ref_model is not None else None
    if why is not None:
        reasons.append(f"reference model: {why}")
    if hidden <= 0:
        reasons.append("the model's hidden size is unknown (no megatron config on it)")
    if not reasons:
        return mode, hidden
    if mode == "on":
        raise GRPOConfigError(
            f"GRPOConfig.prompt_sharing = 'on' is not possible here: {'; '.join(reasons)}. Use 'auto' (takes it "
            "where possible) or 'off'."
        )
    return "off", hidden


def _length_multiple(config: RecipeConfig) -> int:
    """What every micro-batch's length is rounded up to: 8, and with sequence parallelism each (CP rank's share
    of the) sequence split over TP; :func:`plan_micro_batches` adds the ``2 * CP`` chunks."""
    p = config.parallel
    return math.lcm(8, p.context_parallel_size * p.tensor_model_parallel_size) if p.sequence_parallel else 8


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
    pack: bool | None = None,
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
            compute_policy_loss`; with context parallelism it is given ``context_parallel_group``.
        pack: Pack each micro-batch into one row (``None``: on CUDA with an attention that takes
            ``PackedSeqParams``, see :func:`plan_micro_batches`).

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
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    # Context parallelism: every rank of a CP group holds the same rows and keeps its share of each sequence.
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    cp_kwargs = {"context_parallel_group": ps.get_context_parallel_group()} if cp > 1 else {}
    uniform = ps.get_pipeline_model_parallel_world_size() > 1
    pack = _packs(model, config) if pack is None else pack
    share_prompts, hidden = _prompt_sharing(
        model, config, pack=pack, ref_model=ref_model if config.algorithm.beta > 0 else None
    )
    reports_rank = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
    n = len(batch)
    chunks = [c for c in torch.arange(n).tensor_split(updates_per_epoch) if c.numel()]
    plans = [
        plan_micro_batches(
            batch,
            chunk[dp_rank::dp],
            micro,
            pack=pack,
            uniform=uniform,
            multiple=_length_multiple(config),
            context_parallel=(cp_rank, cp),
            share_prompts=share_prompts,
            hidden_size=hidden,
        )
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

    # Positions one epoch runs through the model (this replica's plans, its whole CP group) beside the real ones and
    # what padding every row to the rollout's longest would run; summed over the replicas below.
    # Also this replica's micro-batches and how many of them share their group's prompt (the DP replicas' sum).
    counts = reports_rank and cp_rank == 0
    micro_batches = [mb for plan in plans for mb in plan.micro_batches]
    fed = torch.tensor(
        [
            float(sum(p.fed_tokens for p in plans)) if counts else 0.0,
            float(batch.lengths.sum()) if counts and dp_rank == 0 else 0.0,
            float(batch.input_ids.numel()) if counts and dp_rank == 0 else 0.0,
            float(sum("gather" in mb for mb in micro_batches)) if counts else 0.0,
            float(len(micro_batches)) if counts else 0.0,
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
                        max_response_length=config.generation.max_new_tokens,
                        **cp_kwargs,
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
    if cfg.dual_clip is None:
        out.pop("dual_clip_fraction")
    out["loss"] = float(sums[-1]) / steps
    out["ratio_max"] = float(ratio_max)
    out["grad_norm"] = sum(grad_norms) / steps
    out["optimizer_steps"] = float(len(grad_norms))
    out["train/fed_tokens"] = float(fed[0])
    out["train/real_tokens"] = float(fed[1])
    out["train/padded_over_real"] = float(fed[0] / fed[1]) if fed[1] > 0 else 0.0
    out["train/padded_over_real_rollout_longest"] = float(fed[2] / fed[1]) if fed[1] > 0 else 0.0
    out["train/shared_prompt_micro_batches"] = float(fed[3] / fed[4]) if fed[4] > 0 else 0.0
    return out


class MegatronPolicyWorker:
    """The policy (and reference) ``GPTModel`` of this rank with its megatron DDP, optimizer and LR scheduler.

    Args:
        config: The run config (``model``, ``parallel``, ``optimizer``, ``checkpoint`` / ``init_*`` for the starting
            weights, ``algorithm`` for the loss).

    Attributes:
        module: The unwrapped ``GPTModel`` (what an embedded generation engine decodes with / a refit reads).
        model_config: Its ``PuzzleModelConfig``.
        tokenizer: The run's tokenizer.
        vocab_size: The real vocabulary size (``len(tokenizer)``).
    """

    def __init__(self, config: RecipeConfig) -> None:
        from nemotron_plugins.training.setup import build_model, build_optimizer, build_scheduler

        self.config = config
        self.module, self.model_config, self.tokenizer = build_policy(config)
        self.vocab_size = len(self.tokenizer)
        self.ref_model = None
        if config.algorithm.beta > 0:
            ref = build_model(config, self.model_config)
            ref.load_state_dict(self.module.state_dict())
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            if config.parallel.pipeline_model_parallel_size > 1:
                ref.config.pipeline_dtype = next(ref.parameters()).dtype
            self.ref_model = ref
        self.ddp, self.optimizer = build_optimizer(config, self.module)
        self.optimizer.reload_model_params()
        self.scheduler = build_scheduler(config, self.optimizer)

    def update(self, batch: PolicyBatch, loss_fn: Any | None = None) -> dict[str, float]:
        """The rollout's optimizer steps on ``batch`` (:func:`policy_update`); metrics identical on every rank."""
        return policy_update(
            self.ddp,
            self.optimizer,
            batch,
            self.config,
            vocab_size=self.vocab_size,
            ref_model=self.ref_model,
            scheduler=self.scheduler,
            loss_fn=loss_fn,
        )

    def learning_rate(self) -> float:
        """The optimizer's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def num_parameters(self) -> int:
        """Parameters of this rank's shard."""
        return sum(p.numel() for p in self.module.parameters())

    def write_metadata(self, directory: Path) -> None:
        """The architecture / tokenizer files beside the checkpoints (rank 0 calls it)."""
        from nemotron_plugins.training.setup import write_checkpoint_metadata

        write_checkpoint_metadata(directory, self.model_config, self.tokenizer)

    def latest_checkpoint(self, directory: Path) -> int | None:
        """The newest complete checkpoint step under ``directory`` (``None``: none)."""
        from nemotron_plugins.training.checkpointing import latest_checkpoint

        return latest_checkpoint(directory) if directory.exists() else None

    def save(self, directory: Path, step: int, *, state: Mapping[str, Any], keep_last: int, meta: Mapping) -> None:
        """A megatron distributed checkpoint of model, optimizer and scheduler plus the controller's ``state``."""
        from nemotron_plugins.puzzle.block_config import to_hf_config
        from nemotron_plugins.training.checkpointing import save_checkpoint

        save_checkpoint(
            directory,
            step,
            model=[self.ddp],
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=dict(state),
            keep_last=keep_last,
            config={**meta, "puzzle_config": to_hf_config(self.model_config)},
        )

    def load(self, directory: Path) -> dict[str, Any]:
        """Load the latest checkpoint under ``directory`` (at this layout, resharded if saved at another);
        returns ``{"step", "state", "path"}``. The reference policy stays the initial one."""
        from nemotron_plugins.training.checkpointing import load_checkpoint

        return load_checkpoint(directory, model=[self.ddp], optimizer=self.optimizer, scheduler=self.scheduler)
