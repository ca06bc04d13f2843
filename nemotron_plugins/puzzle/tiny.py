"""A tiny heterogeneous ("Puzzle") model config for CPU demos and tests (SFT, GRPO, recipes).

:func:`tiny_puzzle_config` gives a six-layer decoder of width 128 (4 query heads of width 32) in which every block
kind of the Puzzle search space appears at least once::

    layer  attention        FFN
    0      GQA, 4 KV heads  SwiGLU 384
    1      GQA, 2 KV heads  SwiGLU 256
    2      linear           SwiGLU 256
    3      no-op            linear
    4      GQA, 2 KV heads  no-op
    5      GQA, 4 KV heads  SwiGLU 384

No layer is entirely no-op. KV heads (4, 2) and FFN widths (256, 384) are divisible by 2, so the model can be split
with TP=2, and its six layers split evenly over PP=2 or PP=3. About 0.9M parameters at a 106-token vocabulary.
"""

from __future__ import annotations

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    BlockConfig,
    FFNConfig,
    PuzzleModelConfig,
    make_config,
)

__all__ = ["tiny_puzzle_blocks", "tiny_puzzle_config"]


def tiny_puzzle_blocks() -> tuple[BlockConfig, ...]:
    """The six per-layer block choices of the tiny model (see the module docstring)."""
    return (
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(384)),
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)),
        BlockConfig(attention=AttentionConfig.linear(), ffn=FFNConfig.swiglu(256)),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear()),
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=FFNConfig.swiglu(384)),
    )


def tiny_puzzle_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    num_layers: int | None = None,
) -> PuzzleModelConfig:
    """A small heterogeneous model with every block kind present.

    Args:
        vocab_size: vocabulary size (e.g. ``len(build_tiny_tokenizer())`` = 106 for the character tokenizer).
        hidden_size: model width; the head width is ``hidden_size // num_attention_heads`` (32 by default).
        num_attention_heads: query heads; must be divisible by 4 (KV heads 4 and 2 are used).
        max_position_embeddings: longest supported sequence.
        tie_word_embeddings: share the embedding with the output layer.
        num_layers: use only the first ``num_layers`` blocks (1-6; default all 6).

    Returns:
        The :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` (puzzletron field style, since the tiny
        FFN widths have no decilm ``ffn_mult``).

    Raises:
        ValueError: ``num_layers`` outside 1-6 or ``num_attention_heads`` not a multiple of 4 (other invalid sizes
            raise :class:`~nemotron_plugins.puzzle.block_config.BlockConfigError` naming the field).
    """
    blocks = tiny_puzzle_blocks()
    if num_layers is not None:
        if not 1 <= num_layers <= len(blocks):
            raise ValueError(f"num_layers must be between 1 and {len(blocks)}, got {num_layers}")
        blocks = blocks[:num_layers]
    if num_attention_heads <= 0 or num_attention_heads % 4:
        raise ValueError(
            f"num_attention_heads must be a positive multiple of 4 (KV heads 4 and 2), got {num_attention_heads}"
        )
    return make_config(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        vocab_size=vocab_size,
        blocks=blocks,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
