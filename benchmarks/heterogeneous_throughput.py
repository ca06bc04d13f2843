"""Forward throughput of a heterogeneous (Puzzle) child vs its dense parent on CPU, next to the FLOP-ratio limit.

The child has Llama-3.3-Nemotron-Super-49B's block pattern (80 layers: the same per-layer attention / FFN kinds,
KV heads and FFN widths relative to the model width), scaled down to a CPU-sized hidden size. The parent has the
same global sizes with every layer a full GQA attention (Super's parent ratio: heads / 8 KV heads) and a full-width
FFN (3.5 x hidden, Llama-3.3-70B's 28672 / 8192). Both run megatron-core's local modules through
:func:`nemotron_plugins.puzzle.model.build_puzzle_model` (one gloo process, the CPU adapter on).

The FLOP-ratio limit is ``parent flops_per_token / child flops_per_token`` from the cost model
(:func:`nemotron_plugins.puzzle.cost.estimate_cost` at the benchmark's sequence length): the speedup a purely
compute-bound run would reach.

Usage::

    python benchmarks/heterogeneous_throughput.py [--hidden 512] [--seq-len 256] [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    PuzzleModelConfig,
    load_hf_config,
    make_config,
)
from nemotron_plugins.puzzle.cost import estimate_cost

DEFAULT_CONFIG = Path("/work/shared/reference/llama-3_3-nemotron-super-49b-v1.json")
FIXTURE_CONFIG = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "puzzle" / ("llama-3_3-nemotron-super-49b-v1.json")
)


def scaled_child(source: PuzzleModelConfig, hidden: int, head_dim: int, vocab: int) -> PuzzleModelConfig:
    """``source``'s block pattern at width ``hidden``: heads, KV heads and FFN widths scaled by the same factor."""
    heads = hidden // head_dim
    head_scale = source.num_attention_heads / heads
    blocks = []
    for i, block in enumerate(source.blocks):
        attn = block.attention
        if attn.kind == "gqa":
            kv = attn.num_key_value_heads / head_scale
            if kv < 1 or kv != int(kv):
                raise SystemExit(f"layer {i}: {attn.num_key_value_heads} KV heads do not scale to {heads} heads")
            attn = AttentionConfig.gqa(int(kv))
        ffn = block.ffn
        if ffn.kind == "swiglu":
            width = ffn.intermediate_size * hidden / source.hidden_size
            ffn = FFNConfig.swiglu(max(8, int(round(width / 8)) * 8))
        elif ffn.kind == "linear":
            ffn = FFNConfig.linear()
        else:
            ffn = FFNConfig.no_op()
        attn = {"linear": AttentionConfig.linear(), "no_op": AttentionConfig.no_op()}.get(attn.kind, attn)
        blocks.append(BlockConfig(attention=attn, ffn=ffn))
    return make_config(
        hidden_size=hidden, num_attention_heads=heads, vocab_size=vocab, blocks=blocks, rope_theta=source.rope_theta
    )


def dense_parent(child: PuzzleModelConfig, source: PuzzleModelConfig) -> PuzzleModelConfig:
    """Every layer full GQA (the source's largest KV count, scaled) and a 3.5 x hidden SwiGLU."""
    kv = max(b.attention.num_key_value_heads or 0 for b in child.blocks) or child.num_attention_heads
    width = int(round(3.5 * child.hidden_size / 8)) * 8
    block = BlockConfig(attention=AttentionConfig.gqa(kv), ffn=FFNConfig.swiglu(width))
    return make_config(
        hidden_size=child.hidden_size,
        num_attention_heads=child.num_attention_heads,
        vocab_size=child.vocab_size,
        blocks=[block] * child.num_hidden_layers,
        rope_theta=child.rope_theta,
    )


def forward_tokens_per_s(cfg: PuzzleModelConfig, *, batch: int, seq: int, repeats: int) -> tuple[float, int]:
    from nemotron_plugins.puzzle.model import build_puzzle_model, count_parameters

    model = build_puzzle_model(cfg, perform_initialization=True).eval()
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).expand(batch, seq)
    times = []
    with torch.inference_mode():
        model(tokens, positions, None)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(tokens, positions, None)
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times), count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else FIXTURE_CONFIG)
    parser.add_argument("--hidden", type=int, default=512, help="scaled hidden size (default 512)")
    parser.add_argument("--head-dim", type=int, default=64, help="scaled head dim (default 64)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary of the scaled models")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(args.threads)
    source = load_hf_config(args.config)
    child = scaled_child(source, args.hidden, args.head_dim, args.vocab)
    parent = dense_parent(child, source)
    rows = []
    with distributed_context(seed=0):
        for name, cfg in (("dense parent", parent), ("Super-pattern child", child)):
            tps, params = forward_tokens_per_s(cfg, batch=args.batch, seq=args.seq_len, repeats=args.repeats)
            flops = estimate_cost(cfg, seq_len=args.seq_len).flops_per_token
            rows.append((name, params, flops, tps))
    parent_tps, parent_flops = rows[0][3], rows[0][2]
    print(
        f"{source.num_hidden_layers} layers, hidden {args.hidden}, heads {child.num_attention_heads}, "
        f"batch {args.batch} x seq {args.seq_len}, {args.threads} threads, fp32, megatron-core local modules on CPU"
    )
    header = f"{'model':<22}{'params':>12}{'MFLOP/token':>14}{'tokens/s':>12}{'speedup':>10}{'FLOP-ratio limit':>18}"
    print(header)
    print("-" * len(header))
    for name, params, flops, tps in rows:
        print(
            f"{name:<22}{params:>12,}{flops / 1e6:>14.1f}{tps:>12.0f}{tps / parent_tps:>10.2f}x"
            f"{parent_flops / flops:>17.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
