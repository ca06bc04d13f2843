"""SFT of the Megatron heterogeneous ("Puzzle") model, with exact resume and a reasoning-toggle evaluation.

:func:`run_sft` trains the megatron-core ``GPTModel`` built by :func:`nemotron_plugins.puzzle.model.build_puzzle_model`
on Post-Training-Dataset rows (by default the synthetic addition task with reasoning on/off pairs,
:mod:`nemotron_plugins.data.synthetic`), on CPU (gloo) or GPU, with TP / PP / DP:

* **Data.** Rows -> :func:`~nemotron_plugins.data.sft.build_sft_examples` (loss on the target only) ->
  :func:`~nemotron_plugins.data.packing.pack_examples` (one example per row, or packed with a block-diagonal causal
  mask). The order is a fixed function of ``seed`` and the step (a fresh permutation per epoch), so resuming needs
  only the step count. Each DP rank takes its contiguous slice of the global batch. With ``data.dynamic_padding``
  (the default) a step's rows are cut to the longest sequence of its global batch, rounded up to a multiple of 8,
  instead of ``data.max_seq_length``: the same length on every rank (pipeline P2P shapes agree), the same loss.
* **Step.** megatron's ``get_forward_backward_func`` (no pipelining at PP=1, 1F1B otherwise) runs the micro-batches
  with ``calculate_per_token_loss``: every micro-batch contributes ``sum(token_loss * mask) / tokens_in_global_batch``,
  so the loss is the token mean over the whole global batch, independent of the micro-batch split and of DP.
  Gradients are summed over DP with an all-reduce; the global gradient norm counts TP-replicated parameters once.
  ``optimizer.bf16`` runs forward and backward under ``torch.autocast(bfloat16)`` (fp32 master weights).
* **Optimizer.** ``torch.optim.AdamW`` with the warmup + constant / linear / cosine schedule of
  :class:`~nemotron_plugins.runtime.config.OptimizerConfig`. megatron's ``get_megatron_optimizer`` is not used: it
  needs megatron's DDP wrapper with contiguous gradient buffers, which the CPU path does not build; plain AdamW on
  each rank's shards is exact for TP / PP (every parameter shard lives on exactly one model-parallel rank).
* **Checkpoints.** :class:`~nemotron_plugins.runtime.checkpoint.CheckpointManager` (atomic, per rank, with RNG
  states) every ``checkpoint.save_interval`` steps and at the end. A run whose ``load_dir`` (or ``save_dir``) holds a
  checkpoint resumes from it and reproduces the uninterrupted run's losses exactly (same layout, same machine).
* **Evaluation** (PP=1): the held-out problems are asked with ``detailed thinking on`` and ``off``; greedy decoding
  (a plain no-cache loop, fine for short answers) and per mode the rate of well-formed think blocks (on), the rate
  of replies without think tags (off) and the answer accuracy, printed and returned.

Final checkpoint format (for the GRPO stage, :func:`load_sft_checkpoint`)::

    <checkpoint.save_dir>/
      latest                 "step_000300"
      step_000300/           rank_XXXXX.pt per rank (model_state = GPTModel.state_dict() of that rank's shard,
                             optimizer / scheduler / RNG states, extra.puzzle_config = the HF config dict)
      config.json            the model's HF config (block_configs)
      tokenizer/             the tokenizer (save_pretrained)

Run the demo: ``python -m nemotron_plugins.sft.trainer --demo`` (300 steps, ~few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nemotron_plugins.sft.config import SFTConfigError, SFTEvalConfig, SFTRunConfig, from_recipe

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


def _prepare_data_dir(cfg: SFTRunConfig, rank: int) -> Path:
    """The directory of ``sft_train.jsonl`` (synthetic data is generated there by rank 0)."""
    d = cfg.data
    if d.dataset == "jsonl":
        path = Path(d.path)  # type: ignore[arg-type]
        return path if path.is_dir() else path.parent
    out = Path(d.path) if d.path else Path(cfg.resolved_output_dir()) / "data"
    if rank == 0:
        from nemotron_plugins.data.synthetic import ArithmeticConfig, write_synthetic_dataset

        write_synthetic_dataset(
            out,
            d.num_train_problems,
            d.num_heldout_problems,
            d.data_seed,
            config=ArithmeticConfig(min_value=d.min_value, max_value=d.max_value, corrupt_fraction=d.corrupt_fraction),
        )
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out


def _train_rows_path(cfg: SFTRunConfig, data_dir: Path) -> Path:
    if cfg.data.dataset == "jsonl" and cfg.data.path and Path(cfg.data.path).is_file():
        return Path(cfg.data.path)
    path = data_dir / "sft_train.jsonl"
    if not path.exists():
        raise SFTConfigError(f"data.path: {data_dir} has no sft_train.jsonl")
    return path


def _load_eval_prompts(data_dir: Path, n: int) -> list[dict[str, Any]]:
    """Held-out RL prompt rows (``messages`` + ``ground_truth``) from ``rl_heldout.jsonl``."""
    path = data_dir / "rl_heldout.jsonl"
    if n == 0 or not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows


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

    def collate(self, indices: torch.Tensor, length: int) -> dict[str, Any]:
        """The megatron batch of rows ``indices``, cut to ``length`` positions.

        Cutting only removes trailing padding (``length`` >= the rows' real content): padding has no loss and,
        with causal (or block-diagonal) attention, no real position attends to it, so the loss is unchanged.
        """
        batch: dict[str, Any] = {
            "tokens": self.tokens[indices, :length],
            "labels": self.labels[indices, :length],
            "loss_mask": self.loss_mask[indices, :length],
            "position_ids": self.position_ids[indices, :length],
            "attention_mask": None,
        }
        if self.segment_ids is not None:
            batch["attention_mask"] = _packed_attention_mask(self.segment_ids[indices, :length])
        return batch


def _packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Megatron's ``[b, 1, s, s]`` mask (True = masked) for packed rows: query ``i`` may attend key ``j`` when both
    are in the same sequence and ``j <= i``; padding (segment -1) attends only to itself (as
    :meth:`~nemotron_plugins.data.packing.PackedSequence.attention_allowed`)."""
    n = segment_ids.shape[-1]
    allowed = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)
    allowed &= (segment_ids >= 0).unsqueeze(-1)
    allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    allowed |= torch.eye(n, dtype=torch.bool)
    return (~allowed).unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------------
# Model / optimizer helpers
# ----------------------------------------------------------------------------------------------------------------


def _model_config(cfg: SFTRunConfig, vocab_size: int) -> Any:
    from nemotron_plugins.puzzle.block_config import load_hf_config, parse_hf_config, to_hf_config

    if cfg.model.hf_config_path:
        puzzle = load_hf_config(cfg.model.hf_config_path)
    else:
        from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

        puzzle = tiny_puzzle_config(vocab_size, max_position_embeddings=max(cfg.model.seq_length, 128))
    if cfg.model.overrides:
        data = to_hf_config(puzzle)
        data.update(cfg.model.overrides)
        puzzle = parse_hf_config(data, source="model.overrides")
    if puzzle.vocab_size < vocab_size:
        raise SFTConfigError(
            f"model: vocab_size {puzzle.vocab_size} is smaller than the tokenizer's {vocab_size} tokens"
        )
    return puzzle


def _lr_lambda(cfg: SFTRunConfig):  # noqa: ANN202 - a closure for LambdaLR
    o = cfg.optimizer
    total = cfg.train_steps
    floor = o.min_lr / o.lr

    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.lr_schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _compute_precision(cfg: SFTRunConfig) -> contextlib.AbstractContextManager[Any]:
    """The precision of forward and backward: with ``optimizer.bf16``, ``torch.autocast`` runs matmuls in bf16
    while fp32 parameters stay the master weights AdamW updates (on 2 CPU cores with avx512_bf16 a tiny-recipe step
    takes ~35% less time); otherwise the parameters' dtype throughout."""
    if not cfg.optimizer.bf16:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients over the model-parallel group, TP-replicated parameters counted once."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    grads = [
        p.grad.detach()
        for p in params
        if p.grad is not None and (getattr(p, "tensor_model_parallel", False) or tp_rank == 0)
    ]
    total = torch.zeros((), dtype=torch.float64)
    if grads:
        total += torch.stack(torch._foreach_norm(grads)).double().pow(2).sum()
    if torch.distributed.is_initialized() and parallel_state.get_model_parallel_group() is not None:
        torch.distributed.all_reduce(total, group=parallel_state.get_model_parallel_group())
    return total.sqrt()


def _all_reduce_dp_grads(params: Sequence[torch.nn.Parameter]) -> None:
    from megatron.core import parallel_state

    if parallel_state.get_data_parallel_world_size() == 1:
        return
    group = parallel_state.get_data_parallel_group()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, group=group)


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
    n = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max()) + max_new_tokens
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(n)]
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    for _ in range(max_new_tokens):
        cur = int(lengths.max())
        ids = tokens[:, :cur]
        pos = torch.arange(cur).unsqueeze(0).expand(n, cur)
        logits = model(ids, pos, None)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        last = logits[torch.arange(n), lengths - 1, :vocab_size]
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
    eval_config: SFTEvalConfig,
    vocab_size: int,
) -> dict[str, float]:
    """Greedy-decode each held-out prompt with ``detailed thinking on`` and ``off``; rates per mode.

    Returns keys ``on/think_format`` (well-formed ``<think>...</think>answer``), ``on/accuracy``,
    ``off/no_think`` (no think tags, answer present), ``off/accuracy``, ``on/any_think_tag``, ``off/any_think_tag``
    and ``num_prompts``. With DP, the prompts are split over DP ranks and counts summed.
    """
    from megatron.core import parallel_state

    from nemotron_plugins.chat.render import render_chat
    from nemotron_plugins.chat.toggle import set_reasoning
    from nemotron_plugins.data.synthetic import check_answer
    from nemotron_plugins.rewards.think_format import check_think_format

    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    mine = list(rows)[dp_rank::dp]
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]
    stop_ids = [s for s in stop_ids if isinstance(s, int) and s >= 0]
    counts = torch.zeros(8, dtype=torch.float64)
    for mode_index, mode in enumerate(("on", "off")):
        prompts = []
        for row in mine:
            text = render_chat(set_reasoning(row["messages"], mode), add_generation_prompt=True)
            prompts.append(tokenizer.encode(text, add_special_tokens=False))
        for start in range(0, len(prompts), eval_config.batch_size):
            chunk = prompts[start : start + eval_config.batch_size]
            outs = greedy_generate(
                model, chunk, max_new_tokens=eval_config.max_new_tokens, stop_ids=stop_ids, vocab_size=vocab_size
            )
            for row, ids in zip(mine[start : start + len(chunk)], outs, strict=True):
                text = tokenizer.decode([t for t in ids if t not in stop_ids], skip_special_tokens=False)
                ok, _, _ = check_think_format(text, mode)
                base = mode_index * 4
                counts[base] += float(ok)
                counts[base + 1] += float(check_answer(text, row["ground_truth"]))
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


def run_sft(config: SFTRunConfig | Any) -> SFTResult:
    """Run (or resume) SFT; every rank of a torchrun / :func:`~nemotron_plugins.runtime.distributed.
    run_local_processes` group calls it.

    Args:
        config: An :class:`~nemotron_plugins.sft.config.SFTRunConfig` or a recipe
            (:class:`~nemotron_plugins.launch.recipe_config.RecipeConfig`, ``task == "sft"``).

    Returns:
        The :class:`SFTResult`.

    Raises:
        SFTConfigError: a bad config (raised before any training work).
    """
    cfg = config if isinstance(config, SFTRunConfig) else from_recipe(config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    cfg.validate(world)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    from nemotron_plugins.runtime.distributed import ensure_distributed

    with ensure_distributed(cfg.parallel, seed=cfg.seed):
        return _run(cfg)


def _run(cfg: SFTRunConfig) -> SFTResult:  # noqa: C901, PLR0912, PLR0915 - one linear training procedure
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.data.packing import pack_examples
    from nemotron_plugins.data.sft import load_sft_examples
    from nemotron_plugins.puzzle.block_config import save_hf_config, to_hf_config
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.runtime.checkpoint import CheckpointManager, latest_step, load_training_state
    from nemotron_plugins.runtime.metrics import MetricsLogger

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    is_rank0 = rank == 0
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    is_last_stage = parallel_state.is_pipeline_last_stage()

    # ---- data
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    vocab_size = len(tokenizer)
    data_dir = _prepare_data_dir(cfg, rank)
    examples, report = load_sft_examples(
        _train_rows_path(cfg, data_dir), tokenizer, max_seq_len=cfg.data.max_seq_length
    )
    if cfg.data.reasoning != "both":
        examples = [e for e in examples if e.reasoning == cfg.data.reasoning]
    if not examples:
        raise SFTConfigError(f"data: no usable training examples with reasoning {cfg.data.reasoning!r} ({report})")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = pack_examples(
        examples,
        cfg.data.max_seq_length,
        pad_id=pad_id,
        strategy="first_fit_decreasing" if cfg.data.pack_sequences else "none",
    )
    row_tensors = _RowTensors.from_rows(rows, cfg.data.pack_sequences)
    eval_rows = _load_eval_prompts(data_dir, cfg.eval.num_prompts)
    if is_rank0:
        print(
            f"[sft] {len(examples)} examples -> {len(rows)} rows of {cfg.data.max_seq_length} tokens "
            f"(longest {int(row_tensors.lengths.max())}{', padded per batch' if cfg.data.dynamic_padding else ''}) "
            f"({report.num_skipped} rows skipped); {len(eval_rows)} held-out prompts; world {world_size_str()}",
            flush=True,
        )

    # ---- model
    puzzle = _model_config(cfg, vocab_size)
    model = build_puzzle_model(
        puzzle, parallel=cfg.parallel, seq_length=cfg.data.max_seq_length, params_dtype=cfg.model.params_dtype
    )
    init_weights_layout_invariant_(model, seed=cfg.seed)
    model.config.calculate_per_token_loss = True
    if pp > 1:
        # Under bf16 autocast a stage's output dtype depends on its last layer; send every stage's output in bf16.
        model.config.pipeline_dtype = torch.bfloat16 if cfg.optimizer.bf16 else next(model.parameters()).dtype
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(
        params,
        lr=o.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        eps=o.adam_eps,
        weight_decay=o.weight_decay,
        fused=True,  # one kernel over all parameters (CPU and CUDA), not a Python loop of small ops per tensor
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))

    # ---- resume / init
    save_dir = cfg.checkpoint.save_dir
    load_dir = cfg.checkpoint.load_dir or save_dir
    start_step = 0
    if load_dir and latest_step(load_dir) is not None:
        state = load_training_state(load_dir, restore_rng=True)
        model.load_state_dict(state.model_state)
        optimizer.load_state_dict(state.optimizer_state)
        scheduler.load_state_dict(state.scheduler_state)
        start_step = state.step
        if is_rank0:
            print(f"[sft] resumed from {state.path} at step {start_step}", flush=True)
    elif cfg.init_checkpoint:
        ckpt = load_sft_checkpoint(cfg.init_checkpoint)
        model.load_state_dict(ckpt.model_state)
        if is_rank0:
            print(f"[sft] initialised weights from {ckpt.path}", flush=True)
    manager = CheckpointManager(save_dir, keep_last=cfg.checkpoint.keep_last) if save_dir else None
    if manager is not None and is_rank0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        save_hf_config(puzzle, Path(save_dir) / "config.json")
        tokenizer.save_pretrained(str(Path(save_dir) / "tokenizer"))
    extra = {"puzzle_config": to_hf_config(puzzle), "tokenizer": cfg.data.tokenizer}

    def save(step: int) -> None:
        if manager is None:
            return
        manager.save(
            step,
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            sampler_state={"step": step, "seed": cfg.seed},
            extra=extra,
        )

    result = SFTResult(start_step=start_step, steps_done=start_step, checkpoint_dir=save_dir)
    can_eval = bool(eval_rows) and pp == 1
    if eval_rows and pp > 1 and is_rank0:
        print("[sft] held-out evaluation skipped: greedy generation here needs PP=1", flush=True)
    if can_eval and cfg.eval.at_start and start_step == 0:
        result.eval_before = evaluate_reasoning_toggle(
            model, tokenizer, eval_rows, eval_config=cfg.eval, vocab_size=vocab_size
        )
        if is_rank0:
            print(_format_eval(result.eval_before, "[sft] before training:"), flush=True)

    # ---- loop
    gbs, mbs = cfg.global_batch_size, cfg.micro_batch_size
    per_rank = gbs // dp
    num_micro = per_rank // mbs
    forward_backward = get_forward_backward_func()
    end_step = cfg.stop_after_steps or cfg.train_steps
    log = MetricsLogger(
        jsonl_path=cfg.logging.jsonl_path,
        tensorboard_dir=cfg.logging.tensorboard_dir,
        total=cfg.train_steps,
        progress=cfg.logging.progress_bar,
        progress_keys=["loss", "lr"],
        resume_step=start_step,
    )
    model.train()
    t_loop = t_step = time.perf_counter()
    try:
        for step in range(start_step, end_step):
            order = torch.tensor(_batch_order(len(rows), step, gbs, cfg.seed), dtype=torch.long)
            global_tokens = float(row_tensors.loss_mask[order].sum())
            # One length for the whole global batch: identical on every rank, so pipeline P2P shapes agree.
            seq_length = row_tensors.batch_length(order) if cfg.data.dynamic_padding else row_tensors.max_length
            mine = order[dp_rank * per_rank : (dp_rank + 1) * per_rank]
            micro = [row_tensors.collate(mine[i * mbs : (i + 1) * mbs], seq_length) for i in range(num_micro)]
            batches: Iterator[dict[str, Any]] = iter(micro)

            def forward_step(
                data_iterator: Iterator[dict[str, Any]], model_: Any, global_tokens: float = global_tokens
            ) -> tuple[Any, Any]:
                batch = next(data_iterator)
                output = model_(
                    batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]
                )
                if not is_last_stage:  # the activation sent to the next stage must match its receive buffer
                    output = output.to(model_.config.pipeline_dtype)
                mask = batch["loss_mask"]

                def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                    loss_sum = (output_tensor.float() * mask).sum()
                    return loss_sum / global_tokens, mask.sum().long(), {"loss_sum": loss_sum.detach()}

                return output, loss_func

            optimizer.zero_grad(set_to_none=True)
            with _compute_precision(cfg):
                reduced = forward_backward(
                    forward_step_func=forward_step,
                    data_iterator=batches,
                    model=[model],
                    num_microbatches=num_micro,
                    seq_length=seq_length,
                    micro_batch_size=mbs,
                    forward_only=False,
                )
            _all_reduce_dp_grads(params)
            grad_norm = _grad_norm(params)
            if o.clip_grad > 0:
                coef = o.clip_grad / (grad_norm.item() + 1e-6)
                if coef < 1.0:
                    torch._foreach_mul_([p.grad for p in params if p.grad is not None], coef)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss_sum = torch.zeros((), dtype=torch.float64)
            if is_last_stage and tp_rank == 0:
                loss_sum += sum(float(r["loss_sum"]) for r in reduced)
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
                    "lr": lr,
                    "grad_norm": grad_norm.item(),
                    "tokens": global_tokens,
                    "seq_length": seq_length,
                    "step_time": now - t_step,
                },
            )
            t_step = now
            if is_rank0 and (done % cfg.logging.log_interval == 0 or done == start_step + 1 or done == end_step):
                print(
                    f"[sft] step {done:5d}/{cfg.train_steps}  loss {loss:.4f}  lr {lr:.2e}  "
                    f"grad_norm {grad_norm.item():.3f}",
                    flush=True,
                )
            interval = cfg.checkpoint.save_interval
            if interval and done % interval == 0 and done != end_step:
                save(done)
    finally:
        log.close()
    steps_run = result.steps_done - start_step
    result.seconds_per_step = (time.perf_counter() - t_loop) / max(1, steps_run)
    if result.steps_done > start_step or manager is not None and latest_step(save_dir) is None:
        save(result.steps_done)
    result.stopped_early = result.steps_done < cfg.train_steps
    if is_rank0 and save_dir:
        print(f"[sft] checkpoint: {save_dir} (step {result.steps_done})", flush=True)
    if can_eval and not result.stopped_early:
        result.eval = evaluate_reasoning_toggle(
            model, tokenizer, eval_rows, eval_config=cfg.eval, vocab_size=vocab_size
        )
        if is_rank0:
            print(_format_eval(result.eval, "[sft] after training:"), flush=True)
    return result


def world_size_str() -> str:
    """``TPxPPxDP`` of the current megatron layout."""
    from megatron.core import parallel_state

    return (
        f"TP{parallel_state.get_tensor_model_parallel_world_size()} "
        f"PP{parallel_state.get_pipeline_model_parallel_world_size()} "
        f"DP{parallel_state.get_data_parallel_world_size()}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Demo entry point
# ----------------------------------------------------------------------------------------------------------------


def demo_config(output_dir: str, *, steps: int = 300, eval_prompts: int = 100, threads: int = 2) -> SFTRunConfig:
    """The CPU demo: the tiny Puzzle model on synthetic addition with on/off pairs."""
    from nemotron_plugins.runtime.config import CheckpointConfig, LoggingConfig, OptimizerConfig
    from nemotron_plugins.sft.config import SFTDataConfig

    return SFTRunConfig(
        optimizer=OptimizerConfig(lr=2e-3, min_lr=2e-4, warmup_steps=20, lr_schedule="cosine", clip_grad=1.0),
        checkpoint=CheckpointConfig(save_dir=os.path.join(output_dir, "checkpoints"), save_interval=100),
        logging=LoggingConfig(
            log_interval=20, jsonl_path=os.path.join(output_dir, "metrics.jsonl"), progress_bar=False
        ),
        data=SFTDataConfig(
            num_train_problems=1500,
            num_heldout_problems=max(eval_prompts, 1),
            min_value=10,
            max_value=99,
            max_seq_length=96,
        ),
        eval=SFTEvalConfig(num_prompts=eval_prompts, max_new_tokens=40, batch_size=100, at_start=False),
        train_steps=steps,
        micro_batch_size=16,
        global_batch_size=16,
        output_dir=output_dir,
        num_threads=threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nemotron_plugins.sft.trainer --demo``: run the CPU demo and print losses and toggle rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="run the tiny CPU demo")
    parser.add_argument("--output-dir", default="runs/sft_demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-prompts", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not args.demo:
        parser.error("nothing to do: pass --demo (recipes run through `nemotron-plugins train`)")
    logging.basicConfig(level=logging.WARNING)
    random.seed(args.seed)
    cfg = demo_config(args.output_dir, steps=args.steps, eval_prompts=args.eval_prompts, threads=args.threads)
    cfg.seed = args.seed
    result = run_sft(cfg)
    first = result.losses[min(result.losses)] if result.losses else float("nan")
    last = result.losses[max(result.losses)] if result.losses else float("nan")
    print(f"[sft] loss {first:.4f} -> {last:.4f}; {result.seconds_per_step:.3f} s/step", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
