"""A few steps of real megatron-core training of a tiny heterogeneous Puzzle model, at any TP / PP / SP layout.

Shared by the functional tests (run in-process for TP=1 and in spawned gloo workers for TP=2 / PP=2): megatron DDP,
megatron's Adam optimizer with gradient clipping, and megatron's forward-backward schedule (pipelined when PP > 1)
with ``finalize_model_grads``. Weights come from ``init_weights_layout_invariant_`` so every layout starts from the
same full tensors; every layout sees the same micro-batches.
"""

from __future__ import annotations

from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    PuzzleModelConfig,
    make_config,
)

VOCAB = 128
SEQ = 16
MICRO_BATCH = 2
NUM_MICROBATCHES = 2


def every_kind_config() -> PuzzleModelConfig:
    """A tiny model with every block kind: GQA with 2 and 4 KV heads, linear and no-op attention, FFN widths 64,
    128 and 192 (the 192 one fused from 128 + 64), linear and no-op FFN."""
    gqa, linear, no_op = AttentionConfig.gqa, AttentionConfig.linear, AttentionConfig.no_op
    blocks = [
        BlockConfig(attention=gqa(2), ffn=FFNConfig.swiglu(128)),
        BlockConfig(attention=gqa(4), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=linear(), ffn=FFNConfig.linear()),
        BlockConfig(attention=no_op(), ffn=FFNConfig(kind="swiglu", intermediate_size=192, fused_from=(128, 64))),
        BlockConfig(attention=gqa(2), ffn=FFNConfig.no_op()),
        BlockConfig(attention=no_op(), ffn=FFNConfig.swiglu(128)),
    ]
    return make_config(hidden_size=64, num_attention_heads=4, vocab_size=VOCAB, blocks=blocks, rope_theta=10000.0)


def batches(steps: int, seed: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """``steps`` lists of micro-batches ``(tokens, labels)``: a learnable pattern (next token = token + 1 mod V)
    mixed with noise, identical for every layout."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for _ in range(NUM_MICROBATCHES):
            start = torch.randint(0, VOCAB, (MICRO_BATCH, 1), generator=gen)
            seq = (start + torch.arange(SEQ + 1)) % VOCAB
            step.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
        out.append(step)
    return out


def _forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Any]:
    tokens, labels = next(data_iterator)
    position_ids = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    output = model(tokens, position_ids, None, labels=labels)

    def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = output_tensor.float().mean()
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


def train(parallel_kwargs: dict[str, Any], *, steps: int = 4, seed: int = 7, lr: float = 5e-3) -> list[float] | None:
    """Initialise distributed with ``ParallelConfig(**parallel_kwargs)``, train ``steps`` steps, tear down.

    Returns:
        The mean LM loss of each step on the last pipeline stage's TP rank 0, ``None`` on other ranks.
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import destroy_distributed, init_distributed

    parallel = ParallelConfig(**parallel_kwargs)
    ctx = init_distributed(parallel, seed=seed)
    try:
        cfg = every_kind_config()
        model = build_puzzle_model(cfg, parallel=parallel)
        init_weights_layout_invariant_(model, seed=seed)
        config = model.config
        model = DistributedDataParallel(
            config=config,
            ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            module=model,
        )
        config.finalize_model_grads_func = finalize_model_grads
        optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=lr, weight_decay=0.0, clip_grad=1.0, params_dtype=torch.float32),
            [model],
        )
        forward_backward = get_forward_backward_func()
        losses = []
        for step_batches in batches(steps, seed):
            model.zero_grad_buffer()
            optimizer.zero_grad()
            reports = forward_backward(
                forward_step_func=_forward_step,
                data_iterator=iter(step_batches),
                model=[model],
                num_microbatches=NUM_MICROBATCHES,
                seq_length=SEQ,
                micro_batch_size=MICRO_BATCH,
                forward_only=False,
            )
            ok, _grad_norm, _ = optimizer.step()
            assert ok, "optimizer step failed"
            if reports:
                losses.append(float(torch.stack([r["lm loss"] for r in reports]).mean()))
        keep = ctx.is_last_stage and ctx.tp_rank == 0
        return losses if keep else None
    finally:
        destroy_distributed()


def parallel_worker(rank: int, layouts: dict[str, dict[str, Any]], steps: int, seed: int) -> dict[str, Any]:
    """Run :func:`train` for each named layout in turn (2 processes); return this rank's losses per layout."""
    torch.set_num_threads(1)
    # One gloo process group for all layouts (re-creating it on the same port in a process is racy); each layout
    # rebuilds only megatron's parallel groups on top of it.
    torch.distributed.init_process_group("gloo")
    try:
        return {name: train(kwargs, steps=steps, seed=seed) for name, kwargs in layouts.items()}
    finally:
        torch.distributed.destroy_process_group()
