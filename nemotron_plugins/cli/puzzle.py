"""``nemotron-plugins puzzle ...``: inspect heterogeneous (Puzzle) architectures.

``puzzle describe CONFIG.json [--json] [--seq-len N] [--dtype-bytes B]`` prints a per-layer table (attention kind
and KV heads, FFN kind and width, parameters, KV-cache bytes per token) with totals, or one JSON object.
"""

from __future__ import annotations

import argparse
import json

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``puzzle`` group."""
    parser = subparsers.add_parser("puzzle", help="inspect heterogeneous (Puzzle) architectures")
    sub = parser.add_subparsers(dest="puzzle_command", metavar="SUBCOMMAND")
    describe = sub.add_parser(
        "describe",
        help="per-layer architecture, parameters, KV cache and FLOPs of a config.json",
        description="Validate a DeciLM / puzzletron config.json (or checkpoint directory) and print its per-layer "
        "architecture and cost.",
    )
    describe.add_argument("config", help="config.json file or a checkpoint directory containing one")
    describe.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    describe.add_argument(
        "--seq-len", type=int, default=None, help="keys attended per token for the attention FLOPs (default 4096)"
    )
    describe.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV-cache element (default 2, bf16)")
    describe.set_defaults(func=run_describe)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def run_describe(args: argparse.Namespace) -> int:
    """Print the architecture and cost of one config."""
    from nemotron_plugins.puzzle.block_config import BlockConfigError, load_hf_config
    from nemotron_plugins.puzzle.cost import DEFAULT_SEQ_LEN, estimate_cost

    seq_len = DEFAULT_SEQ_LEN if args.seq_len is None else args.seq_len
    if seq_len < 1:
        fail(f"--seq-len must be a positive integer, got {seq_len}")
    if args.dtype_bytes < 1:
        fail(f"--dtype-bytes must be a positive integer, got {args.dtype_bytes}")
    try:
        cfg = load_hf_config(args.config)
    except BlockConfigError as err:
        fail(str(err))
    cost = estimate_cost(cfg, seq_len=seq_len, dtype_bytes=args.dtype_bytes)

    if args.json:
        out = {
            "config": str(args.config),
            "field_style": cfg.field_style,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            **cost.to_dict(),
        }
        for layer, block in zip(out["layers"], cfg.blocks, strict=True):
            layer["ffn_fused_from"] = list(block.ffn.fused_from) if block.ffn.fused_from else None
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"{args.config}: {cfg.field_style} style, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads x {cfg.head_dim}, vocab {cfg.vocab_size}"
        f"{', tied embeddings' if cfg.tie_word_embeddings else ''}"
    )
    header = f"{'layer':>5}  {'attention':<10}  {'ffn':<22}  {'params':>14}  {'KV B/tok':>8}  {'GFLOP/tok':>9}"
    print(header)
    print("-" * len(header))
    for layer, block in zip(cost.layers, cfg.blocks, strict=True):
        attn = f"gqa kv={layer.kv_heads}" if layer.attention_kind == "gqa" else layer.attention_kind
        if layer.ffn_kind == "swiglu":
            ffn = f"swiglu {layer.ffn_width}"
            if block.ffn.fused_from:
                ffn += f" (fused x{len(block.ffn.fused_from)})"
        else:
            ffn = layer.ffn_kind
        print(
            f"{layer.index:>5}  {attn:<10}  {ffn:<22}  {layer.params:>14,}  {layer.kv_cache_bytes_per_token:>8,}"
            f"  {layer.flops_per_token / 1e9:>9.3f}"
        )
    print("-" * len(header))
    kinds = [layer.attention_kind for layer in cost.layers]
    ffn_kinds = [layer.ffn_kind for layer in cost.layers]
    print(
        f"attention: {kinds.count('gqa')} gqa, {kinds.count('linear')} linear, {kinds.count('no_op')} no_op; "
        f"ffn: {ffn_kinds.count('swiglu')} swiglu, {ffn_kinds.count('linear')} linear, {ffn_kinds.count('no_op')} no_op"
    )
    print(f"embedding params:          {cost.embedding_params:>18,}")
    print(f"lm head params:            {cost.lm_head_params:>18,}{'  (tied)' if cfg.tie_word_embeddings else ''}")
    print(f"final norm params:         {cost.final_norm_params:>18,}")
    print(f"total params:              {cost.total_params:>18,}  ({_human(cost.total_params)})")
    print(f"KV cache bytes per token:  {cost.kv_cache_bytes_per_token:>18,}  ({args.dtype_bytes} bytes/element)")
    print(
        f"forward FLOPs per token:   {cost.flops_per_token:>18,}  ({_human(cost.flops_per_token)}, seq_len {seq_len})"
    )
    return 0
