"""Worker for the context-parallel test: one forward / backward of a tiny Puzzle model at a given CP size."""

from __future__ import annotations

import warnings

import torch

from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
from nemotron_plugins.runtime.config import ParallelConfig

SEQ = 64


def every_kind_config():
    gqa, linear, no_op = AttentionConfig.gqa, AttentionConfig.linear, AttentionConfig.no_op
    blocks = [
        BlockConfig(attention=gqa(2), ffn=FFNConfig.swiglu(128)),
        BlockConfig(attention=gqa(4), ffn=FFNConfig.swiglu(64)),
        BlockConfig(attention=linear(), ffn=FFNConfig.linear()),
        BlockConfig(attention=no_op(), ffn=FFNConfig.swiglu(96)),
        BlockConfig(attention=gqa(1), ffn=FFNConfig.no_op()),
    ]
    return make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=blocks)


def loss_and_grads(rank: int, cp: int, seed: int) -> dict[str, object]:
    """Sequence loss (summed over CP ranks) and full gradients of one forward / backward at CP size ``cp``."""
    from megatron.core import parallel_state

    from nemotron_plugins.puzzle.context_parallel import split_for_context_parallel
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.runtime.distributed import distributed_context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context(ParallelConfig(context_parallel_size=cp), seed=seed):
            model = build_puzzle_model(every_kind_config(), layer_spec="puzzle_sdpa", seq_length=SEQ)
            init_weights_layout_invariant_(model, seed=seed)
            g = torch.Generator().manual_seed(seed)
            tokens = torch.randint(0, 128, (2, SEQ), generator=g)
            labels = torch.randint(0, 128, (2, SEQ), generator=g)
            local = split_for_context_parallel({"tokens": tokens, "labels": labels})
            per_token = model(local["tokens"], None, None, labels=local["labels"])
            loss = per_token.float().sum()
            loss.backward()
            group = parallel_state.get_context_parallel_group()
            total = loss.detach().clone()
            torch.distributed.all_reduce(total, group=group)
            grads = {}
            for name, param in model.named_parameters():
                grad = param.grad.detach().clone()
                torch.distributed.all_reduce(grad, group=group)  # what DDP does over the DP x CP group
                grads[name] = grad
            return {
                "rank": rank,
                "local_tokens": int(local["tokens"].shape[1]),
                "loss": float(total),
                "grads": grads,
            }


def worker(rank: int, cp: int, seed: int) -> dict[str, object]:
    """``run_local_processes`` entry point."""
    return loss_and_grads(rank, cp, seed)


def sequence_mean_loss_and_grads(rank: int, cp: int, seed: int) -> dict[str, object]:
    """A GRPO-style sequence-mean loss (mean over each sequence's masked tokens, then over sequences) at CP size
    ``cp``: targets and mask built at full length, then split; per-sequence counts from ``sequence_token_counts``."""
    from megatron.core import parallel_state

    from nemotron_plugins.puzzle.context_parallel import sequence_token_counts, split_for_context_parallel
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.runtime.distributed import distributed_context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context(ParallelConfig(context_parallel_size=cp), seed=seed):
            model = build_puzzle_model(every_kind_config(), layer_spec="puzzle_sdpa", seq_length=SEQ)
            init_weights_layout_invariant_(model, seed=seed)
            g = torch.Generator().manual_seed(seed)
            tokens = torch.randint(0, 128, (3, SEQ), generator=g)
            targets = torch.roll(tokens, -1, dims=1)
            # Completions of different lengths: the mask starts after a prompt and ends at each row's length.
            positions = torch.arange(SEQ)
            ends = torch.tensor([SEQ - 1, SEQ // 2, 40])
            mask = ((positions >= 8) & (positions < ends[:, None])).float()
            local = split_for_context_parallel({"tokens": tokens, "targets": targets, "mask": mask})
            per_token = model(local["tokens"], None, None, labels=local["targets"]).float()
            counts = sequence_token_counts(local["mask"])
            loss = ((per_token * local["mask"]).sum(dim=-1) / counts).mean()
            loss.backward()
            group = parallel_state.get_context_parallel_group()
            total = loss.detach().clone()
            torch.distributed.all_reduce(total, group=group)
            grads = {}
            for name, param in model.named_parameters():
                grad = param.grad.detach().clone()
                torch.distributed.all_reduce(grad, group=group)
                grads[name] = grad
            return {"loss": float(total), "grads": grads, "counts": counts.tolist()}


def sequence_mean_worker(rank: int, cp: int, seed: int) -> dict[str, object]:
    """``run_local_processes`` entry point of :func:`sequence_mean_loss_and_grads`."""
    return sequence_mean_loss_and_grads(rank, cp, seed)
