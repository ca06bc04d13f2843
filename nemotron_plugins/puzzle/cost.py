"""What a Puzzle architecture costs: parameters, KV-cache bytes and forward FLOPs, per layer and in total.

Parameter counts follow the Megatron model built from the same :class:`~nemotron_plugins.puzzle.block_config.
PuzzleModelConfig` (bias-free linears, RMSNorm with a weight only):

=================  ==========================================================================================
sub-block          parameters
=================  ==========================================================================================
GQA attention      pre-norm ``hidden`` + QKV ``hidden * (heads + 2 * kv) * head_dim`` + output
                   ``heads * head_dim * hidden``
linear attention   pre-norm ``hidden`` + one ``hidden * hidden`` linear
SwiGLU FFN         pre-norm ``hidden`` + gate and up ``2 * width * hidden`` + down ``width * hidden``
linear FFN         pre-norm ``hidden`` + one ``hidden * hidden`` linear
no-op              nothing (no norm either)
model              + embedding ``vocab * hidden`` + final norm ``hidden`` + lm head ``vocab * hidden`` unless tied
=================  ==========================================================================================

KV cache: every GQA layer stores a key and a value vector per KV head, ``2 * kv * head_dim * dtype_bytes`` bytes per
token (a sliding window does not change the per-token size, only how many tokens are kept).

FLOPs (forward, one token, multiply-add = 2 FLOPs):

* matmuls: ``2 *`` the weights of every linear the token passes through (norm weights and the embedding lookup are
  not matmuls and count 0; the lm head counts ``2 * vocab * hidden`` whether or not it is tied);
* attention scores and values of each GQA layer: ``2 * heads * head_dim * ctx`` for ``Q K^T`` plus the same for
  ``softmax(.) V``, where ``ctx = seq_len`` keys are attended (``min(seq_len, window_length)`` with a sliding window).
  That is the cost of a token at position ``seq_len`` (a decode step with a full cache); averaged over a causal
  prefill of ``seq_len`` tokens it is about half;
* not counted: norms, softmax, SiLU and elementwise products, rotary embeddings, residual additions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nemotron_plugins.puzzle.block_config import (
    AttentionConfig,
    AttentionKind,
    FFNConfig,
    FFNKind,
    PuzzleModelConfig,
)

__all__ = [
    "DEFAULT_SEQ_LEN",
    "LayerCost",
    "ModelCost",
    "attention_flops_per_token",
    "attention_kv_cache_bytes_per_token",
    "attention_params",
    "estimate_cost",
    "ffn_flops_per_token",
    "ffn_params",
]

DEFAULT_SEQ_LEN = 4096
"""Context length used for the attention-score FLOPs when none is given."""


def attention_params(attn: AttentionConfig, cfg: PuzzleModelConfig) -> int:
    """Parameters of one attention sub-block (its pre-norm included)."""
    hidden = cfg.hidden_size
    if attn.kind == "no_op":
        return 0
    if attn.kind == "linear":
        return hidden + hidden * hidden
    q_width = cfg.num_attention_heads * cfg.head_dim
    kv_width = attn.num_key_value_heads * cfg.head_dim
    return hidden + hidden * (q_width + 2 * kv_width) + q_width * hidden


def ffn_params(ffn: FFNConfig, hidden_size: int) -> int:
    """Parameters of one FFN sub-block (its pre-norm included)."""
    if ffn.kind == "no_op":
        return 0
    if ffn.kind == "linear":
        return hidden_size + hidden_size * hidden_size
    return hidden_size + 3 * ffn.intermediate_size * hidden_size


def attention_kv_cache_bytes_per_token(attn: AttentionConfig, cfg: PuzzleModelConfig, *, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token adds in this attention (0 unless GQA)."""
    if attn.kind != "gqa":
        return 0
    return 2 * attn.num_key_value_heads * cfg.head_dim * dtype_bytes


def attention_flops_per_token(attn: AttentionConfig, cfg: PuzzleModelConfig, *, seq_len: int) -> int:
    """Forward FLOPs of one token in this attention: projections plus scores/values over ``seq_len`` keys."""
    matmul_params = attention_params(attn, cfg) - (cfg.hidden_size if attn.kind != "no_op" else 0)
    flops = 2 * matmul_params
    if attn.kind == "gqa":
        ctx = seq_len if attn.window_length is None else min(seq_len, attn.window_length)
        flops += 4 * cfg.num_attention_heads * cfg.head_dim * ctx
    return flops


def ffn_flops_per_token(ffn: FFNConfig, hidden_size: int) -> int:
    """Forward matmul FLOPs of one token in this FFN."""
    matmul_params = ffn_params(ffn, hidden_size) - (hidden_size if ffn.kind != "no_op" else 0)
    return 2 * matmul_params


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerCost:
    """The cost of one layer."""

    index: int
    """Layer index."""
    attention_kind: AttentionKind
    """``gqa``, ``linear`` or ``no_op``."""
    kv_heads: int | None
    """KV heads of a GQA attention, else ``None``."""
    ffn_kind: FFNKind
    """``swiglu``, ``linear`` or ``no_op``."""
    ffn_width: int | None
    """SwiGLU width, else ``None``."""
    attention_params: int
    """Parameters of the attention sub-block (norm included)."""
    ffn_params: int
    """Parameters of the FFN sub-block (norm included)."""
    params: int
    """``attention_params + ffn_params``."""
    kv_cache_bytes_per_token: int
    """KV-cache bytes per token at the estimate's ``dtype_bytes``."""
    flops_per_token: int
    """Forward FLOPs per token at the estimate's ``seq_len`` (see the module docstring for what is counted)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCost:
    """The cost of a whole model."""

    layers: tuple[LayerCost, ...]
    """Per-layer costs."""
    embedding_params: int
    """Input embedding ``vocab * hidden``."""
    lm_head_params: int
    """Output layer ``vocab * hidden``, 0 when tied to the embedding."""
    final_norm_params: int
    """Final RMSNorm ``hidden``."""
    total_params: int
    """All parameters (tied weights counted once)."""
    kv_cache_bytes_per_token: int
    """KV-cache bytes per token summed over layers."""
    flops_per_token: int
    """Forward FLOPs per token: layers plus the lm head."""
    seq_len: int
    """Context length the attention FLOPs were computed for."""
    dtype_bytes: int
    """Bytes per KV-cache element (2 for bf16)."""

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.layers)

    def memory_bytes(self, *, batch_size: int, seq_len: int, weight_bytes: int = 2) -> int:
        """Weights plus a full KV cache for ``batch_size`` sequences of ``seq_len`` tokens (Puzzle's memory budget)."""
        return self.total_params * weight_bytes + batch_size * seq_len * self.kv_cache_bytes_per_token

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: totals, then ``layers`` as a list of per-layer dicts."""
        return {
            "num_layers": self.num_layers,
            "total_params": self.total_params,
            "embedding_params": self.embedding_params,
            "lm_head_params": self.lm_head_params,
            "final_norm_params": self.final_norm_params,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
            "flops_per_token": self.flops_per_token,
            "seq_len": self.seq_len,
            "dtype_bytes": self.dtype_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def estimate_cost(cfg: PuzzleModelConfig, *, seq_len: int = DEFAULT_SEQ_LEN, dtype_bytes: int = 2) -> ModelCost:
    """Count parameters, KV-cache bytes per token and forward FLOPs per token of ``cfg``.

    Args:
        cfg: the architecture.
        seq_len: number of keys each token attends to, for the attention-score FLOPs (must be >= 1).
        dtype_bytes: bytes per KV-cache element (2 for bf16/fp16, 1 for fp8).

    Returns:
        Per-layer and total costs; what is counted is listed in the module docstring.

    Example:
        >>> from nemotron_plugins.puzzle.block_config import BlockConfig, make_config
        >>> cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=100, blocks=[
        ...     BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256))])
        >>> cost = estimate_cost(cfg, seq_len=8)
        >>> cost.total_params, cost.kv_cache_bytes_per_token
        (74432, 128)
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(dtype_bytes, bool) or not isinstance(dtype_bytes, int) or dtype_bytes < 1:
        raise ValueError(f"dtype_bytes must be a positive integer, got {dtype_bytes!r}")
    hidden = cfg.hidden_size
    layers = []
    for i, block in enumerate(cfg.blocks):
        attn_p = attention_params(block.attention, cfg)
        ffn_p = ffn_params(block.ffn, hidden)
        layers.append(
            LayerCost(
                index=i,
                attention_kind=block.attention.kind,
                kv_heads=block.attention.num_key_value_heads,
                ffn_kind=block.ffn.kind,
                ffn_width=block.ffn.intermediate_size,
                attention_params=attn_p,
                ffn_params=ffn_p,
                params=attn_p + ffn_p,
                kv_cache_bytes_per_token=attention_kv_cache_bytes_per_token(
                    block.attention, cfg, dtype_bytes=dtype_bytes
                ),
                flops_per_token=attention_flops_per_token(block.attention, cfg, seq_len=seq_len)
                + ffn_flops_per_token(block.ffn, hidden),
            )
        )
    embedding = cfg.vocab_size * hidden
    lm_head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * hidden
    final_norm = hidden
    return ModelCost(
        layers=tuple(layers),
        embedding_params=embedding,
        lm_head_params=lm_head,
        final_norm_params=final_norm,
        total_params=sum(layer.params for layer in layers) + embedding + lm_head + final_norm,
        kv_cache_bytes_per_token=sum(layer.kv_cache_bytes_per_token for layer in layers),
        flops_per_token=sum(layer.flops_per_token for layer in layers) + 2 * cfg.vocab_size * hidden,
        seq_len=seq_len,
        dtype_bytes=dtype_bytes,
    )
