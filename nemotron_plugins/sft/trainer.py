"""SFT of the Megatron heterogeneous ("Puzzle") model, with exact resume and a reasoning-toggle evaluation.

:func:`run_sft` trains the megatron-core ``GPTModel`` built by :func:`nemotron_plugins.puzzle.model.build_puzzle_model`
on Post-Training-Dataset rows (by default the synthetic addition task with reasoning on/off pairs,
:mod:`nemotron_plugins.data.synthetic`), on CPU (gloo) or GPU, with TP / PP / CP / DP:

* **Data.** Rows -> :func:`~nemotron_plugins.data.sft.build_sft_examples` (loss on the target only) ->
  :func:`~nemotron_plugins.data.packing.pack_examples` (one example per row, or packed: document boundaries reach
  attention as megatron ``PackedSeqParams``, never a dense mask
  mask). The order is a fixed function of ``seed`` and the step (a fresh permutation per epoch), so resuming needs
  only the step count. Each DP rank takes its contiguous slice of the global batch. With ``data.dynamic_padding``
  (the default) a step's rows are cut to the longest sequence of its global batch, rounded up to a multiple of 8,
  instead of ``data.max_seq_length``: the same length on every rank (pipeline P2P shapes agree), the same loss.
* **Step.** megatron's ``get_forward_backward_func`` (no pipelining at PP=1, 1F1B otherwise) runs the micro-batches
  with ``calculate_per_token_loss``: every micro-batch contributes ``sum(token_loss * mask) / tokens_in_global_batch``,
  so the loss is the token mean over the whole global batch, independent of the micro-batch split and of DP.
  Gradients are summed over DP with an all-reduce; the global gradient norm counts TP-replicated parameters once.
  ``optimizer.bf16`` runs forward and backward under ``torch.autocast(bfloat16)`` (fp32 master weights).
* **Context parallelism** (``parallel.context_parallel_size > 1``): every micro-batch keeps this rank's share of
  each sequence in megatron's load-balanced layout (:mod:`nemotron_plugins.puzzle.context_parallel`): unpacked
  rows in ``2 * cp`` chunks (the step's length a multiple of ``2 * cp``, and of ``cp * TP`` with sequence
  parallelism); packed rows with every document padded to ``2 * cp`` and cut on its own (megatron's ``thd`` CP
  layout, real and padded boundaries in ``PackedSeqParams``), all micro-batches of a step filled to one length.
  The attention gathers K/V over the CP group; each rank's loss is its tokens' sum over the global batch's token
  count and DDP sums gradients over DP x CP, so losses and gradients are those of CP=1. Evaluation needs CP=1.
* **Optimizer.** The shared training stack (:mod:`nemotron_plugins.training.setup`): megatron DDP, megatron's
  optimizer (the distributed optimizer with ``parallel.use_distributed_optimizer``; global-norm clipping) and its LR
  scheduler (warmup, then constant / linear / cosine decay to ``optimizer.min_lr``).
* **Checkpoints.** megatron distributed checkpoints (:mod:`nemotron_plugins.training.checkpointing`: model,
  optimizer state, scheduler, data position, RNG; atomic; keep-last-N) every ``checkpoint.save_interval`` steps and
  at the end. A run whose ``load_dir`` (or ``save_dir``) holds one resumes from it (same layout: exactly; another
  layout: resharded).
* **Evaluation** (PP=1): the held-out problems are asked with ``detailed thinking on`` and ``off``; greedy decoding
  (a plain no-cache loop, fine for short answers) and per mode the rate of well-formed think blocks (on), the rate
  of replies without think tags (off) and the answer accuracy, printed and returned.

Checkpoint root: ``iter_XXXXXXX/`` directories (megatron torch_dist), a ``latest`` marker, and beside them the
model's HF ``config.json`` and ``tokenizer/`` so a later stage (``init_checkpoint``) and ``nemotron-plugins export``
find the architecture and tokenizer.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

__all__ = [
    "SFTCheckpoint",
    "SFTResult",
    "evaluate_reasoning_toggle",
    "greedy_generate",
    "load_sft_checkpoint",
    "load_sft_model",
    "run_sft",
]


@dataclass(kw_only=True, slots=True)
class SFTResult:
    """What :func:`run_sft` returns (on every rank; loss values are the global-batch token means)."""

    losses: dict[int, float] = field(default_factory=dict)
    """Training loss per step run by this call (1-based step numbers)."""
    start_step: int = 0
    """Steps already done when this call started (> 0 after a resume)."""
    steps_done: int = 0
    """Completed steps when this call returned."""
    stopped_early: bool = False
    """Whether ``stop_after_steps`` ended the call before ``train_steps``."""
    checkpoint_dir: str | None = None
    """The checkpoint root the final state was saved to (``None`` without ``checkpoint.save_dir``)."""
    eval: dict[str, float] | None = None
    """Held-out evaluation after training (see :func:`evaluate_reasoning_toggle`); ``None`` when skipped."""
    eval_before: dict[str, float] | None = None
    """Evaluation before training (``eval.at_start``)."""
    seconds_per_step: float = 0.0
    """Mean wall time of a training step in this call."""


@dataclass(kw_only=True, slots=True)
class SFTCheckpoint:
    """A saved SFT model: what :func:`load_sft_checkpoint` returns."""

    model_config: Any
    """The :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig`."""
    tokenizer: Any
    """The tokenizer the model was trained with."""
    model_state: dict[str, Any]
    """This rank's ``GPTModel.state_dict()``."""
    step: int
    """Training steps done."""
    path: Path
    """The ``step_XXXXXX`` directory loaded."""
    world_size: int = 1
    """World size of the run that wrote it (the layout must match to load the shards)."""


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


class SFTConfigError(ValueError):
    """The run config cannot be trained by SFT; the message names the field."""


def _eval_prompts(config: RecipeConfig, n: int) -> list[dict[str, Any]]:
    """Held-out prompt rows (``messages`` + ``ground_truth``): the synthetic task's ``rl_heldout.jsonl`` or
    ``data.eval_path``."""
    from nemotron_plugins.data.sources import SYNTHETIC, read_prompt_rows, synthetic_data_dir

    if n == 0:
        return []
    if config.data.dataset == SYNTHETIC:
        source: Path | None = synthetic_data_dir(config.output_dir or "runs") / "rl_heldout.jsonl"
    else:
        source = Path(config.data.eval_path) if config.data.eval_path else None
    if source is None:
        return []
    return read_prompt_rows(source, splits=config.data.splits, reasoning="both", limit=n)


def _batch_order(num_rows: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Row indices of the global batch of 0-based ``step``: epochs of seeded permutations, concatenated."""
    out: list[int] = []
    start = step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.extend(perm[offset : offset + global_batch - len(out)])
    return out


PAD_MULTIPLE = 8
"""Dynamic padding rounds a step's sequence length up to a multiple of this."""


@dataclass(frozen=True, slots=True)
class _RowTensors:
    """All training rows stacked once into ``[rows, max_seq_length]`` tensors, so a step's batch is an index
    and a slice instead of Python lists turned into tensors every step."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: torch.Tensor
    """Per row: the end of its last real sequence (everything after it is padding)."""
    segment_ids: torch.Tensor | None
    """Packed rows only: the sequence index of each position (-1 on padding), for the block-diagonal mask."""

    @classmethod
    def from_rows(cls, rows: Sequence[Any], packed: bool) -> _RowTensors:
        """Stack :class:`~nemotron_plugins.data.packing.PackedSequence` rows (all of one length)."""
        return cls(
            tokens=torch.tensor([r.input_ids for r in rows], dtype=torch.long),
            labels=torch.tensor([r.labels for r in rows], dtype=torch.long),
            loss_mask=torch.tensor([r.loss_mask for r in rows], dtype=torch.float32),
            position_ids=torch.tensor([r.position_ids for r in rows], dtype=torch.long),
            lengths=torch.tensor([len(r) - r.num_padding for r in rows], dtype=torch.long),
            segment_ids=torch.tensor([r.segment_ids for r in rows], dtype=torch.int32) if packed else None,
        )

    @property
    def max_length(self) -> int:
        """The stored row length (``data.max_seq_length``)."""
        return int(self.tokens.shape[1])

    def batch_length(self, indices: torch.Tensor, multiple: int = PAD_MULTIPLE) -> int:
        """Sequence length for a batch of rows: its longest real content rounded up to ``multiple``, at most
        :attr:`max_length`. Computed over the whole global batch, it is the same on every rank."""
        longest = int(self.lengths[indices].max()) if len(indices) else 1
        return min(self.max_length, -(-longest // multiple) * multiple)

    def collate(
        self,
        indices: torch.Tensor,
        length: int,
        *,
        device: torch.device | None = None,
        context_parallel: tuple[int, int] = (0, 1),
        packed_length: int | None = None,
        pad_id: int = 0,
    ) -> dict[str, Any]:
        """The megatron batch of rows ``indices``, cut to ``length`` positions (this CP rank's part with CP).

        Cutting only removes trailing padding (``length`` >= the rows' real content): padding has no loss and,
        with causal (or per-document) attention, no real position attends to it, so the loss is unchanged. Packed
        rows are flattened into one ``[1, rows * length]`` sequence whose document boundaries reach attention as
        megatron ``PackedSeqParams`` (``packed_seq_params``; never a dense mask).

        With context parallelism (``context_parallel = (cp_rank, cp_size)``, ``cp_size > 1``) every tensor keeps
        this rank's ``1 / cp_size`` of the sequence in megatron's load-balanced layout
        (:mod:`nemotron_plugins.puzzle.context_parallel`): unpacked rows are cut into ``2 * cp_size`` chunks
        (``length`` must be a multiple of it); packed rows have every document padded to a multiple of
        ``2 * cp_size`` (``pad_id``, no loss) and cut into chunks of its own, filled up to ``packed_length``
        tokens (:meth:`packed_context_parallel_length`), with real and padded boundaries in the
        ``PackedSeqParams``.
        """
        cp_rank, cp_size = context_parallel
        batch: dict[str, Any] = {
            "tokens": self.tokens[indices, :length],
            "labels": self.labels[indices, :length],
            "loss_mask": self.loss_mask[indices, :length],
            "position_ids": self.position_ids[indices, :length],
            "attention_mask": None,
        }
        if self.segment_ids is not None:
            from nemotron_plugins.puzzle.attention import packed_seq_params_from_segment_ids

            segments = self.segment_ids[indices, :length]
            batch = {k: (v.reshape(1, -1) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            params = packed_seq_params_from_segment_ids(segments)
            if cp_size > 1:
                from nemotron_plugins.puzzle.context_parallel import split_packed_batch_for_context_parallel

                batch, params = split_packed_batch_for_context_parallel(
                    batch,
                    params.cu_seqlens_q,
                    cp_rank,
                    cp_size,
                    length=packed_length,
                    pad_values={"tokens": pad_id, "labels": pad_id},
                )
            if device is not None:
                for name in ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded"):
                    value = getattr(params, name)
                    if value is not None:
                        setattr(params, name, value.to(device))
            batch["packed_seq_params"] = params
        elif cp_size > 1:
            from nemotron_plugins.puzzle.context_parallel import split_batch_for_context_parallel

            batch = split_batch_for_context_parallel(batch, cp_rank, cp_size)
        if device is not None:
            batch = {
                k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
        return batch

    def packed_context_parallel_length(
        self, micro_batches: Sequence[torch.Tensor], length: int, cp_size: int, multiple: int
    ) -> int:
        """The padded length of packed micro-batches under CP: the longest of ``micro_batches`` (every row cut
        to ``length``, every segment padded to a multiple of ``2 * cp_size``), rounded up to ``multiple``.

        Computed over all micro-batches of the global batch it is the same on every rank (pipeline P2P shapes).
        """
        from nemotron_plugins.puzzle.attention import packed_seq_params_from_segment_ids

        if self.segment_ids is None:
            raise ValueError("packed_context_parallel_length needs packed rows")
        step = 2 * cp_size
        longest = step
        for indices in micro_batches:
            cu = packed_seq_params_from_segment_ids(self.segment_ids[indices, :length]).cu_seqlens_q.long()
            lengths = cu[1:] - cu[:-1]
            longest = max(longest, int(((lengths + step - 1) // step * step).sum()))
        return -(-longest // multiple) * multiple


# ----------------------------------------------------------------------------------------------------------------
# Model / optimizer helpers
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Generation and evaluation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    vocab_size: int,
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy continuation of each prompt by recomputing the whole sequence every step (no KV cache).

    Rows are right-padded; causal attention makes padding after a row's end invisible to its real tokens, and each
    row reads the logits at its own last position. Needs PP=1; with TP the vocab-parallel logits are gathered.

    Args:
        model: A ``GPTModel`` (PP=1).
        prompts: Token ids of each prompt.
        max_new_tokens: Longest continuation.
        stop_ids: Tokens that end a continuation (kept in the output).
        vocab_size: Real vocabulary size (padding logits beyond it are never chosen).
        pad_id: Padding token.

    Returns:
        The generated token ids of each prompt (without the prompt).
    """
    from megatron.core import parallel_state, tensor_parallel

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max()) + max_new_tokens
    tokens = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)
    for _ in range(max_new_tokens):
        cur = int(lengths.max())
        ids = tokens[:, :cur]
        pos = torch.arange(cur, device=device).unsqueeze(0).expand(n, cur)
        logits = model(ids, pos, None)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        last = logits[rows, lengths - 1, :vocab_size]
        nxt = last.argmax(dim=-1)
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        active = ~done
        tokens[active, lengths[active]] = nxt[active]
        lengths = lengths + active.long()
        done |= torch.isin(nxt, stop)
        if bool(done.all()):
            break
    model.train(was_training)
    return out


def evaluate_reasoning_toggle(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int,
    batch_size: int,
    vocab_size: int,
    is_correct: Any = None,
) -> dict[str, float]:
    """Greedy-decode each held-out prompt with ``detailed thinking on`` and ``off``; rates per mode.

    ``is_correct(text, ground_truth) -> bool`` scores the answers (default: the synthetic task's integer check).

    Returns keys ``on/think_format`` (well-formed ``<think>...</think>answer``), ``on/accuracy``,
    ``off/no_think`` (no think tags, answer present), ``off/accuracy``, ``on/any_think_tag``, ``off/any_think_tag``
    and ``num_prompts``. With DP, the prompts are split over DP ranks and counts summed.
    """
    from megatron.core import parallel_state

    from nemotron_plugins.chat.render import render_chat
    from nemotron_plugins.chat.toggle import set_reasoning
    from nemotron_plugins.rewards.think_format import check_think_format

    if is_correct is None:
        from nemotron_plugins.data.synthetic import check_answer as is_correct

    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    mine = list(rows)[dp_rank::dp]
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]
    stop_ids = [s for s in stop_ids if isinstance(s, int) and s >= 0]
    counts = torch.zeros(8, dtype=torch.float64, device=next(model.parameters()).device)
    for mode_index, mode in enumerate(("on", "off")):
        prompts = []
        for row in mine:
            text = render_chat(set_reasoning(row["messages"], mode), add_generation_prompt=True)
            prompts.append(tokenizer.encode(text, add_special_tokens=False))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            outs = greedy_generate(
                model, chunk, max_new_tokens=max_new_tokens, stop_ids=stop_ids, vocab_size=vocab_size
            )
            for row, ids in zip(mine[start : start + len(chunk)], outs, strict=True):
                text = tokenizer.decode([t for t in ids if t not in stop_ids], skip_special_tokens=False)
                ok, _, _ = check_think_format(text, mode)
                base = mode_index * 4
                counts[base] += float(ok)
                counts[base + 1] += float(is_correct(text, row["ground_truth"]))
                counts[base + 2] += float("<think>" in text or "</think>" in text)
                counts[base + 3] += 1.0
    if dp > 1:
        torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    n_on, n_off = max(counts[3].item(), 1.0), max(counts[7].item(), 1.0)
    return {
        "num_prompts": counts[3].item(),
        "on/think_format": counts[0].item() / n_on,
        "on/accuracy": counts[1].item() / n_on,
        "on/any_think_tag": counts[2].item() / n_on,
        "off/no_think": counts[4].item() / n_off,
        "off/accuracy": counts[5].item() / n_off,
        "off/any_think_tag": counts[6].item() / n_off,
    }


def _format_eval(result: dict[str, float], title: str) -> str:
    n = int(result["num_prompts"])
    return (
        f"{title} over {n} held-out prompts per mode (greedy):\n"
        f"  reasoning on : well-formed <think> rate {result['on/think_format']:.3f}   "
        f"accuracy {result['on/accuracy']:.3f}\n"
        f"  reasoning off: no-think-tag rate        {result['off/no_think']:.3f}   "
        f"accuracy {result['off/accuracy']:.3f}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint loading for later stages
# ----------------------------------------------------------------------------------------------------------------


def load_sft_checkpoint(path: str | os.PathLike[str], *, step: int | None = None) -> SFTCheckpoint:
    """Load a checkpoint written by :func:`run_sft` (this rank's shard; RNG states are not touched).

    Args:
        path: The checkpoint root (``checkpoint.save_dir``, holding ``latest``) or one ``step_XXXXXX`` directory.
        step: Which step under a root (default: the latest).

    Returns:
        The :class:`SFTCheckpoint` (model config, tokenizer, this rank's model state dict, step).

    Raises:
        nemotron_plugins.runtime.checkpoint.CheckpointError: nothing loadable at ``path``.
    """
    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.puzzle.block_config import parse_hf_config
    from nemotron_plugins.runtime.checkpoint import CheckpointError, load_training_state

    state = load_training_state(path, step=step, restore_rng=False)
    extra = state.extra or {}
    if "puzzle_config" not in extra:
        raise CheckpointError(f"{state.path}: not an SFT checkpoint (no extra.puzzle_config)")
    root = state.path.parent
    tok_dir = root / "tokenizer"
    tokenizer = load_tokenizer(tok_dir if tok_dir.is_dir() else extra.get("tokenizer", "tiny"))
    return SFTCheckpoint(
        model_config=parse_hf_config(extra["puzzle_config"], source=str(state.path)),
        tokenizer=tokenizer,
        model_state=state.model_state,
        step=state.step,
        path=state.path,
        world_size=state.world_size,
    )


def load_sft_model(path: str | os.PathLike[str], *, parallel: Any = None, seq_length: int | None = None) -> Any:
    """Build the ``GPTModel`` of an SFT checkpoint and load this rank's weights (``parallel_state`` initialised,
    same TP / PP layout as the run that saved it). Returns ``(model, checkpoint)``."""
    from nemotron_plugins.puzzle.model import build_puzzle_model

    ckpt = load_sft_checkpoint(path)
    model = build_puzzle_model(
        ckpt.model_config, parallel=parallel, seq_length=seq_length, perform_initialization=False
    )
    model.load_state_dict(ckpt.model_state)
    return model, ckpt


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def run_sft(config: RecipeConfig) -> SFTResult:
    """Run (or resume) SFT of the run config; every rank of a torchrun /
    :func:`~nemotron_plugins.runtime.distributed.run_local_processes` group calls it.

    Args:
        config: The recipe's :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` (``task == "sft"``),
            read directly: there is no second SFT schema.

    Returns:
        The :class:`SFTResult`.

    Raises:
        RecipeValidationError: A config the shared validation rejects (raised before any training work).
    """
    from nemotron_plugins.launch.recipe_config import resolve_paths
    from nemotron_plugins.launch.validation import validate_for_run

    if getattr(config, "task", None) != "sft":
        raise SFTConfigError(f"task: run_sft needs an 'sft' run config, got {getattr(config, 'task', None)!r}")
    resolve_paths(config)
    validate_for_run(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)

    from nemotron_plugins.runtime.distributed import ensure_distributed

    with ensure_distributed(config.parallel, seed=config.seed):
        return _run(config)


def _is_correct_for(config: RecipeConfig) -> Any:
    """The answer check of the SFT evaluation: the synthetic task's integer match, else the ``math`` reward, scored
    in a worker process with a per-sample time and memory bound (model text, as everywhere else); a sample it could
    not score (status not OK) counts as not correct."""
    from nemotron_plugins.data.sources import SYNTHETIC

    if config.data.dataset == SYNTHETIC:
        return None
    from nemotron_plugins.rewards.base import RewardSample, build_reward
    from nemotron_plugins.rewards.pool import bounded_reward

    reward = bounded_reward(build_reward("math"), workers=1, timeout_s=10.0)

    def is_correct(text: str, ground_truth: Any) -> bool:
        result = reward.score([RewardSample(completion=text, ground_truth=str(ground_truth))])[0]
        return bool(result.score and result.score > 0)

    return is_correct


def _run(cfg: RecipeConfig) -> SFTResult:  # noqa: C901, PLR0912, PLR0915 - one linear training procedure
    from megatron.core import parallel_state

    from nemotron_plugins.data.packing import pack_examples
    from nemotron_plugins.data.sft import build_sft_examples
    from nemotron_plugins.data.sources import SYNTHETIC, prepare_synthetic_data, sft_training_rows
    from nemotron_plugins.runtime.distributed import barrier
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
    from nemotron_plugins.training.step import model_device, optimizer_step

    rank = world_rank()[1]
    is_rank0 = rank == 0
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    cp = parallel_state.get_context_parallel_world_size()
    cp_rank = parallel_state.get_context_parallel_rank()
    is_last_stage = parallel_state.is_pipeline_last_stage()
    output_dir = Path(cfg.output_dir or os.path.join("runs", cfg.name))

    # ---- data
    tokenizer = load_run_tokenizer(cfg)
    vocab_size = len(tokenizer)
    if cfg.data.dataset == SYNTHETIC:
        if is_rank0:
            prepare_synthetic_data(cfg.data, output_dir)
        barrier()
    training_rows, source = sft_training_rows(cfg.data, output_dir, seed=cfg.seed)
    examples, report = build_sft_examples(
        training_rows,
        tokenizer,
        max_seq_len=cfg.data.max_seq_length,
        template=cfg.data.chat_template,
    )
    if cfg.data.reasoning != "both":
        examples = [e for e in examples if e.reasoning == cfg.data.reasoning]
    if cfg.data.num_train_samples is not None:
        examples = examples[: cfg.data.num_train_samples]
    if not examples:
        raise SFTConfigError(
            f"data: no usable training examples in {source} with reasoning {cfg.data.reasoning!r} ({report})"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = pack_examples(
        examples,
        cfg.data.max_seq_length,
        pad_id=pad_id,
        strategy="first_fit_decreasing" if cfg.data.pack_sequences else "none",
    )
    row_tensors = _RowTensors.from_rows(rows, cfg.data.pack_sequences)
    evaluation = cfg.evaluation
    eval_rows = _eval_prompts(cfg, evaluation.num_samples)
    if is_rank0:
        print(
            f"[sft] {len(examples)} examples from {source} -> {len(rows)} rows of {cfg.data.max_seq_length} tokens "
            f"(longest {int(row_tensors.lengths.max())}{', padded per batch' if cfg.data.dynamic_padding else ''}) "
            f"({report.num_skipped} rows skipped); {len(eval_rows)} held-out prompts; world {world_size_str()}",
            flush=True,
        )

    # ---- model, optimizer, scheduler: the shared training stack
    puzzle = load_architecture(cfg)
    if puzzle.vocab_size < vocab_size:
        raise SFTConfigError(
            f"model: vocab_size {puzzle.vocab_size} is smaller than the tokenizer's {vocab_size} tokens"
        )
    model = build_model(cfg, puzzle)
    save_dir = cfg.checkpoint.save_dir
    load_dir = cfg.checkpoint.load_dir or save_dir
    resuming = bool(load_dir and latest_checkpoint(load_dir) is not None)
    if not resuming:
        source_of_weights = initialise_weights(cfg, model, puzzle)
        if is_rank0:
            print(f"[sft] weights: {source_of_weights}", flush=True)
    ddp, optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    device = model_device(model)

    # ---- resume (at the saved layout or another one: megatron's distributed checkpoints reshard)
    start_step = 0
    if resuming:
        if not cfg.checkpoint.resume:
            raise SFTConfigError(
                f"checkpoint.resume=false but {load_dir} holds checkpoints; delete them or set checkpoint.save_dir "
                "elsewhere"
            )
        loaded = load_checkpoint(load_dir, model=[ddp], optimizer=optimizer, scheduler=scheduler)
        start_step = int(loaded["step"])
        if is_rank0:
            print(f"[sft] resumed from {loaded['path']} at step {start_step}", flush=True)
    if save_dir and is_rank0:
        write_checkpoint_metadata(save_dir, puzzle, tokenizer)

    def save(step: int) -> None:
        save_run_checkpoint(cfg, step, ddp=ddp, optimizer=optimizer, scheduler=scheduler, arch=puzzle)

    result = SFTResult(start_step=start_step, steps_done=start_step, checkpoint_dir=save_dir)
    can_eval = bool(eval_rows) and pp == 1 and cp == 1
    if eval_rows and not can_eval and is_rank0:
        print("[sft] held-out evaluation skipped: greedy generation here needs PP=1 and CP=1", flush=True)
    eval_kwargs = {
        "max_new_tokens": evaluation.max_new_tokens or 64,
        "batch_size": evaluation.batch_size,
        "vocab_size": vocab_size,
        "is_correct": _is_correct_for(cfg) if can_eval else None,
    }
    if can_eval and evaluation.at_start and start_step == 0:
        result.eval_before = evaluate_reasoning_toggle(model, tokenizer, eval_rows, **eval_kwargs)
        if is_rank0:
            print(_format_eval(result.eval_before, "[sft] before training:"), flush=True)

    # ---- loop
    gbs, mbs = cfg.global_batch_size, cfg.micro_batch_size
    per_rank = gbs // dp
    num_micro = per_rank // mbs
    end_step = cfg.stop_after_steps or cfg.train_steps
    log = run_metrics_logger(cfg, resume_step=start_step, progress_keys=["loss", "lr"])
    # Sequence lengths under CP: 2 * cp load-balanced chunks; with sequence parallelism each rank's s / cp tokens
    # split over TP as well.
    cp_multiple = math.lcm(2 * cp, cp * tp if cfg.parallel.sequence_parallel else 1) if cp > 1 else 1
    ddp.train()
    t_loop = t_step = time.perf_counter()
    try:
        for step in range(start_step, end_step):
            order = torch.tensor(_batch_order(len(rows), step, gbs, cfg.seed), dtype=torch.long)
            global_tokens = float(row_tensors.loss_mask[order].sum())
            # One length for the whole global batch: identical on every rank, so pipeline P2P shapes agree.
            seq_length = (
                row_tensors.batch_length(order, math.lcm(PAD_MULTIPLE, cp_multiple))
                if cfg.data.dynamic_padding
                else row_tensors.max_length
            )
            # Packed micro-batches travel as one flattened sequence of mbs rows (pipeline buffers: [mbs * s, 1]);
            # under CP every document is padded to 2 * cp and all micro-batches to the step's longest.
            schedule_length = seq_length * mbs if cfg.data.pack_sequences else seq_length
            if cfg.data.pack_sequences and cp > 1:
                schedule_length = row_tensors.packed_context_parallel_length(
                    [order[i : i + mbs] for i in range(0, gbs, mbs)], seq_length, cp, cp_multiple
                )
            mine = order[dp_rank * per_rank : (dp_rank + 1) * per_rank]
            micro = [
                row_tensors.collate(
                    mine[i * mbs : (i + 1) * mbs],
                    seq_length,
                    device=device,
                    context_parallel=(cp_rank, cp),
                    packed_length=schedule_length if cfg.data.pack_sequences else None,
                    pad_id=pad_id,
                )
                for i in range(num_micro)
            ]

            def forward_step(
                data_iterator: Iterator[dict[str, Any]], model_: Any, global_tokens: float = global_tokens
            ) -> tuple[Any, Any]:
                batch = next(data_iterator)
                output = model_(
                    batch["tokens"],
                    batch["position_ids"],
                    batch["attention_mask"],
                    labels=batch["labels"],
                    **({"packed_seq_params": batch["packed_seq_params"]} if "packed_seq_params" in batch else {}),
                )
                mask = batch["loss_mask"]

                def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    # This rank's tokens (its 1 / cp of the sequence under CP) over the global batch's token count:
                    # DDP sums gradients over DP x CP, so the sum of the ranks' terms is the CP1 / DP1 gradient.
                    loss_sum = (output_tensor.float() * mask).sum()
                    return loss_sum / global_tokens, mask.sum().long(), {"loss_sum": loss_sum.detach()}

                return output, loss_func

            stepped = optimizer_step(
                [ddp],
                optimizer,
                scheduler,
                micro,
                forward_step,
                seq_length=schedule_length,  # the whole sequence: megatron divides by CP for its buffers
                micro_batch_size=1 if cfg.data.pack_sequences else mbs,
            )
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            if is_last_stage and tp_rank == 0:
                loss_sum += sum(float(r["loss_sum"]) for r in stepped.reports)
            if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(loss_sum)
            loss = loss_sum.item() / global_tokens
            done = step + 1
            result.losses[done] = loss
            result.steps_done = done
            now = time.perf_counter()
            log.log(
                done,
                {
                    "loss": loss,
                    "lr": stepped.lr,
                    "grad_norm": stepped.grad_norm,
                    "tokens": global_tokens,
                    "seq_length": seq_length,
                    "step_time": now - t_step,
                },
            )
            t_step = now
            if is_rank0 and (done % cfg.logging.log_interval == 0 or done == start_step + 1 or done == end_step):
                print(
                    f"[sft] step {done:5d}/{cfg.train_steps}  loss {loss:.4f}  lr {stepped.lr:.2e}  "
                    f"grad_norm {stepped.grad_norm:.3f}",
                    flush=True,
                )
            interval = cfg.checkpoint.save_interval
            if interval and done % interval == 0 and done != end_step:
                save(done)
            if evaluation.interval and can_eval and done % evaluation.interval == 0 and done < end_step:
                ev = evaluate_reasoning_toggle(model, tokenizer, eval_rows, **eval_kwargs)
                log.log(done, {f"eval/{k}": v for k, v in ev.items()})
    finally:
        log.close()
    steps_run = result.steps_done - start_step
    result.seconds_per_step = (time.perf_counter() - t_loop) / max(1, steps_run)
    if result.steps_done > start_step or save_dir and latest_checkpoint(save_dir) is None:
        save(result.steps_done)
    result.stopped_early = result.steps_done < cfg.train_steps
    if is_rank0 and save_dir:
        print(f"[sft] checkpoint: {save_dir} (step {result.steps_done})", flush=True)
    if can_eval and not result.stopped_early:
        result.eval = evaluate_reasoning_toggle(model, tokenizer, eval_rows, **eval_kwargs)
        if is_rank0:
            print(_format_eval(result.eval, "[sft] after training:"), flush=True)
    return result


def world_size_str() -> str:
    """``TP.. PP.. CP.. DP..`` of the current megatron layout."""
    from megatron.core import parallel_state

    return (
        f"TP{parallel_state.get_tensor_model_parallel_world_size()} "
        f"PP{parallel_state.get_pipeline_model_parallel_world_size()} "
        f"CP{parallel_state.get_context_parallel_world_size()} "
        f"DP{parallel_state.get_data_parallel_world_size()}"
    )
