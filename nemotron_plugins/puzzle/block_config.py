"""The schema of heterogeneous ("Puzzle") architectures: one attention + one FFN choice per layer.

A :class:`PuzzleModelConfig` is parsed from, and written back to, a Hugging Face ``config.json`` with a per-layer
``block_configs`` list. Two field styles exist:

``decilm``
    The released ``nemotron-nas`` / ``DeciLMForCausalLM`` checkpoints (Llama-3.1-Nemotron-51B, Llama-3.3-Nemotron
    Super-49B, Ultra-253B). Attention size is ``n_heads_in_group`` (KV heads = ``num_attention_heads //
    n_heads_in_group``), FFN size is ``ffn_mult`` (width = ``int(2 * ffn_mult * hidden / 3)`` rounded up to a
    multiple of 256, see :func:`ffn_mult_to_intermediate_size`).
``puzzletron``
    Model Optimizer's newer format: ``num_key_value_heads`` and ``intermediate_size`` per block (plus
    ``weights_precision``, ``llama4``, ``mamba``, ``moe`` and a block-level ``parallel_blocks``, which we keep only at
    their default values).

Parsing validates everything (see :class:`BlockConfigError`) and keeps every key it does not interpret (``extra``,
``hf_extra``) and the order of the keys it saw (``hf_keys``), so ``to_hf_config(parse_hf_config(x)) == x`` for any
valid ``x``. Writing in the other style converts what is representable and raises :class:`BlockConfigError` for the
rest (an FFN width that no ``ffn_mult`` produces, a sliding window in puzzletron style, ...).

:func:`to_megatron_block_configs` gives the same blocks in megatron-core's own keys (``num_query_groups``,
``ffn_hidden_size``) for ``HeterogeneousTransformerConfig.heterogeneous_layers_config_encoded_json``.

A plain Llama config (no ``block_configs``) is accepted too: it becomes ``num_hidden_layers`` identical GQA + SwiGLU
blocks built from the global ``num_key_value_heads`` / ``intermediate_size``; written back it gains ``block_configs``
in puzzletron style.

The ``nemotron_plugins`` extension
----------------------------------
FFN Fusion merges parallel FFNs into one wider SwiGLU (see :mod:`nemotron_plugins.puzzle.ffn_fusion`). The widths of
the merged FFNs are recorded in a top-level key, NOT inside the block dicts (DeciLM's remote code builds its block
dataclasses with ``**dict`` and would reject an unknown key; a top-level key is kept as a plain attribute by
``transformers.PretrainedConfig``)::

    "nemotron_plugins": {"fused_from": {"40": [5120, 5120, 12288]}}

Keys of ``fused_from`` are layer indices (JSON object keys are strings); each value lists the widths of the parallel
FFNs merged into that layer's FFN, in concatenation order, and must sum to the layer's FFN width. The key is written
only when some layer is fused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "AttentionConfig",
    "AttentionKind",
    "BlockConfig",
    "BlockConfigError",
    "FFNConfig",
    "FFNKind",
    "FieldStyle",
    "FrozenMap",
    "PuzzleModelConfig",
    "EXTENSION_KEY",
    "ffn_mult_to_intermediate_size",
    "intermediate_size_to_ffn_mult",
    "load_hf_config",
    "make_config",
    "parse_hf_config",
    "reject_unimplemented",
    "save_hf_config",
    "to_hf_config",
    "to_megatron_block_configs",
]

AttentionKind = Literal["gqa", "linear", "no_op"]
FFNKind = Literal["swiglu", "linear", "no_op"]
FieldStyle = Literal["decilm", "puzzletron"]

EXTENSION_KEY = "nemotron_plugins"
"""Top-level config key holding this package's extensions (currently only ``fused_from``)."""

_FIELD_STYLES = ("decilm", "puzzletron")

# Known keys of a block's sub-dicts per field style, with the value that means "not used". Keys typed on the
# dataclasses (size keys, no_op, replace_with_linear, window_length) are handled separately; the others are kept
# verbatim in ``extra``.
_DECILM_ATTENTION_KEYS: dict[str, Any] = {
    "n_heads_in_group": None,
    "no_op": False,
    "num_sink_tokens": None,
    "replace_with_linear": False,
    "sparsify": None,
    "unshifted_sink": False,
    "use_prefill_window_in_sink_attention": False,
    "window_length": None,
}
_DECILM_FFN_KEYS: dict[str, Any] = {
    "ffn_mult": None,
    "no_op": False,
    "replace_with_linear": False,
    "sparsify": None,
}
_PUZZLETRON_ATTENTION_KEYS: dict[str, Any] = {
    "no_op": False,
    "replace_with_linear": False,
    "sparsify": None,
    "weights_precision": "bf16",
    "num_key_value_heads": None,
    "llama4": None,
    "mamba": None,
}
_PUZZLETRON_FFN_KEYS: dict[str, Any] = {
    "no_op": False,
    "replace_with_linear": False,
    "sparsify": None,
    "weights_precision": "bf16",
    "moe": None,
    "intermediate_size": None,
}
# Unused values of the keys kept in ``extra`` (both styles); the size keys are ignored on no_op/linear sub-blocks.
_ATTENTION_DEFAULTS = {**_DECILM_ATTENTION_KEYS, **_PUZZLETRON_ATTENTION_KEYS}
_FFN_DEFAULTS = {**_DECILM_FFN_KEYS, **_PUZZLETRON_FFN_KEYS}
_SIZE_KEYS = {"n_heads_in_group", "num_key_value_heads", "ffn_mult", "intermediate_size"}
_ATTENTION_KEYS = {"decilm": _DECILM_ATTENTION_KEYS, "puzzletron": _PUZZLETRON_ATTENTION_KEYS}
_FFN_KEYS = {"decilm": _DECILM_FFN_KEYS, "puzzletron": _PUZZLETRON_FFN_KEYS}
_ATTENTION_SIZE_KEY = {"decilm": "n_heads_in_group", "puzzletron": "num_key_value_heads"}
_FFN_SIZE_KEY = {"decilm": "ffn_mult", "puzzletron": "intermediate_size"}
# Puzzletron keys whose non-default values describe modules we do not build.
_UNSUPPORTED_NON_DEFAULT = {"llama4", "mamba", "moe"}

# Top-level keys typed on PuzzleModelConfig. ``head_dim`` and ``rope_scaling`` are optional in HF configs: they are
# written when the source had them or when their value is not the implied default.
_TOP_LEVEL_TYPED = (
    "hidden_size",
    "num_attention_heads",
    "head_dim",
    "num_hidden_layers",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rms_norm_eps",
    "tie_word_embeddings",
)
# Defaults used when a key is missing (transformers' LlamaConfig defaults); such keys are not written back.
_TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


class BlockConfigError(ValueError):
    """An invalid Puzzle architecture config. The message starts with the path of the bad field.

    Attributes:
        path: where the problem is, e.g. ``"block_configs[12].attention.n_heads_in_group"`` (may be empty).
        reason: what is wrong and what would be valid.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)

    def under(self, prefix: str) -> BlockConfigError:
        """Return the same error with ``prefix`` prepended to its path (``prefix.path``)."""
        if not prefix:
            return self
        if not self.path:
            return BlockConfigError(prefix, self.reason)
        sep = "" if self.path.startswith("[") else "."
        return BlockConfigError(f"{prefix}{sep}{self.path}", self.reason)


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping (nested dicts become FrozenMaps and lists become tuples).

    It compares equal to a plain dict with the same items; :meth:`thaw` gives back JSON-ready dicts and lists.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = {str(k): _freeze(v) for k, v in (data or {}).items()}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def thaw(self) -> dict[str, Any]:
        """Return a plain, JSON-ready ``dict`` copy (tuples become lists)."""
        return {k: _thaw(v) for k, v in self._data.items()}


def _freeze(value: Any) -> Any:
    if isinstance(value, FrozenMap):
        return value
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, FrozenMap):
        return value.thaw()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _settings(extra: Mapping[str, Any], defaults: Mapping[str, Any]) -> FrozenMap:
    return FrozenMap(
        {k: v for k, v in extra.items() if k not in _SIZE_KEYS and not (k in defaults and v == defaults[k])}
    )


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_int(path: str, value: Any, what: str) -> None:
    if not _is_int(value) or value <= 0:
        raise BlockConfigError(path, f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class AttentionConfig:
    """The attention sub-block of one layer."""

    kind: AttentionKind
    """``"gqa"``: grouped-query self-attention with its pre-norm; ``"linear"``: pre-norm + one bias-free
    hidden->hidden linear (``replace_with_linear``); ``"no_op"``: identity, no norm and no weights."""
    num_key_value_heads: int | None = None
    """KV heads (query groups); set iff ``kind == "gqa"``."""
    window_length: int | None = None
    """DeciLM sliding-window length (``None``: full attention). Parsed so configs round-trip and the cost model can
    describe them; building or loading a model with one raises (:func:`reject_unimplemented`): the Megatron layers
    implement full causal attention only. Only decilm style can write it."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Other known HF keys of this sub-dict (``sparsify``, ``num_sink_tokens``, ``weights_precision``, ...), verbatim.
    Not compared directly: equality uses ``settings`` (the same without keys at their "unused" value)."""
    hf_keys: tuple[str, ...] | None = field(default=None, compare=False)
    """Keys of the source HF sub-dict in their order (``None`` when built in code); used only for exact write-back."""
    settings: Mapping[str, Any] = field(init=False, repr=False)
    """Derived: the ``extra`` entries that differ from their unused default (what ``==`` and ``hash`` compare)."""

    def __post_init__(self) -> None:
        if self.kind not in ("gqa", "linear", "no_op"):
            raise BlockConfigError("attention.kind", f"must be 'gqa', 'linear' or 'no_op', got {self.kind!r}")
        if self.kind == "gqa":
            _check_positive_int(
                "attention.num_key_value_heads", self.num_key_value_heads, "a GQA attention's KV heads"
            )
        elif self.num_key_value_heads is not None:
            raise BlockConfigError(
                "attention.num_key_value_heads",
                f"must be None for a {self.kind!r} attention (KV heads only exist for 'gqa'), "
                f"got {self.num_key_value_heads!r}",
            )
        if self.window_length is not None:
            _check_positive_int("attention.window_length", self.window_length, "window_length")
        _set(self, "extra", FrozenMap(self.extra))
        _set(self, "settings", _settings(self.extra, _ATTENTION_DEFAULTS))
        if self.hf_keys is not None:
            _set(self, "hf_keys", tuple(self.hf_keys))

    @classmethod
    def gqa(cls, num_key_value_heads: int) -> AttentionConfig:
        """A GQA attention with ``num_key_value_heads`` KV heads."""
        return cls(kind="gqa", num_key_value_heads=num_key_value_heads)

    @classmethod
    def linear(cls) -> AttentionConfig:
        """An attention replaced by one hidden->hidden linear."""
        return cls(kind="linear")

    @classmethod
    def no_op(cls) -> AttentionConfig:
        """A removed attention (identity)."""
        return cls(kind="no_op")


@dataclass(frozen=True, kw_only=True, slots=True)
class FFNConfig:
    """The FFN sub-block of one layer."""

    kind: FFNKind
    """``"swiglu"``: pre-norm + gated SiLU MLP; ``"linear"``: pre-norm + one bias-free hidden->hidden linear;
    ``"no_op"``: identity, no norm and no weights."""
    intermediate_size: int | None = None
    """SwiGLU width; set iff ``kind == "swiglu"``."""
    ffn_mult: float | None = field(default=None, compare=False)
    """The HF ``ffn_mult`` when the source used one (kept so write-back reproduces it exactly). Not compared: two
    multipliers with the same width (1.0 and 1.03125 at hidden 8192) describe the same FFN."""
    fused_from: tuple[int, ...] | None = None
    """FFN Fusion: widths of the parallel FFNs merged into this one, in concatenation order (sum ==
    ``intermediate_size``). Stored in the top-level ``nemotron_plugins`` key of the HF config."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Other known HF keys of this sub-dict (``sparsify``, ``weights_precision``, ...), verbatim. Not compared
    directly: equality uses ``settings``."""
    hf_keys: tuple[str, ...] | None = field(default=None, compare=False)
    """Keys of the source HF sub-dict in their order (``None`` when built in code); used only for exact write-back."""
    settings: Mapping[str, Any] = field(init=False, repr=False)
    """Derived: the ``extra`` entries that differ from their unused default (what ``==`` and ``hash`` compare)."""

    def __post_init__(self) -> None:
        if self.kind not in ("swiglu", "linear", "no_op"):
            raise BlockConfigError("ffn.kind", f"must be 'swiglu', 'linear' or 'no_op', got {self.kind!r}")
        if self.kind == "swiglu":
            _check_positive_int("ffn.intermediate_size", self.intermediate_size, "a SwiGLU FFN's width")
        else:
            for name in ("intermediate_size", "ffn_mult", "fused_from"):
                if getattr(self, name) is not None:
                    raise BlockConfigError(
                        f"ffn.{name}", f"must be None for a {self.kind!r} FFN (only 'swiglu' has a width)"
                    )
        if self.ffn_mult is not None and (not _is_number(self.ffn_mult) or self.ffn_mult <= 0):
            raise BlockConfigError("ffn.ffn_mult", f"must be a positive number, got {self.ffn_mult!r}")
        if self.fused_from is not None:
            widths = tuple(self.fused_from)
            if len(widths) < 2 or not all(_is_int(w) and w > 0 for w in widths):
                raise BlockConfigError(
                    "ffn.fused_from", f"must list at least two positive integer widths, got {list(widths)!r}"
                )
            if sum(widths) != self.intermediate_size:
                raise BlockConfigError(
                    "ffn.fused_from",
                    f"widths {list(widths)} sum to {sum(widths)}, but intermediate_size is {self.intermediate_size}",
                )
            _set(self, "fused_from", widths)
        _set(self, "extra", FrozenMap(self.extra))
        _set(self, "settings", _settings(self.extra, _FFN_DEFAULTS))
        if self.hf_keys is not None:
            _set(self, "hf_keys", tuple(self.hf_keys))

    @classmethod
    def swiglu(cls, intermediate_size: int) -> FFNConfig:
        """A SwiGLU FFN of width ``intermediate_size``."""
        return cls(kind="swiglu", intermediate_size=intermediate_size)

    @classmethod
    def linear(cls) -> FFNConfig:
        """An FFN replaced by one hidden->hidden linear."""
        return cls(kind="linear")

    @classmethod
    def no_op(cls) -> FFNConfig:
        """A removed FFN (identity)."""
        return cls(kind="no_op")


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockConfig:
    """One layer: attention then FFN, each with its own pre-norm and residual (absent when no-op)."""

    attention: AttentionConfig
    """The attention sub-block."""
    ffn: FFNConfig
    """The FFN sub-block."""
    hf_keys: tuple[str, ...] | None = field(default=None, compare=False)
    """Keys of the source HF block dict in their order (``None`` when built in code); for exact write-back."""

    def __post_init__(self) -> None:
        if not isinstance(self.attention, AttentionConfig):
            raise BlockConfigError("attention", f"must be an AttentionConfig, got {type(self.attention).__name__}")
        if not isinstance(self.ffn, FFNConfig):
            raise BlockConfigError("ffn", f"must be an FFNConfig, got {type(self.ffn).__name__}")

    @property
    def is_no_op(self) -> bool:
        """True when both sub-blocks are no-ops (the layer is the identity)."""
        return self.attention.kind == "no_op" and self.ffn.kind == "no_op"


@dataclass(frozen=True, kw_only=True, slots=True)
class PuzzleModelConfig:
    """A whole heterogeneous decoder: global sizes plus one :class:`BlockConfig` per layer."""

    hidden_size: int
    """Model width."""
    num_attention_heads: int
    """Query heads of every GQA attention."""
    head_dim: int
    """Width of one attention head (HF ``head_dim``; ``hidden_size // num_attention_heads`` when absent)."""
    num_hidden_layers: int
    """Number of layers; must equal ``len(blocks)``."""
    vocab_size: int
    """Vocabulary size (embedding and output rows)."""
    max_position_embeddings: int
    """Longest supported sequence."""
    rope_theta: float
    """RoPE base."""
    rope_scaling: Mapping[str, Any] | None
    """HF ``rope_scaling`` dict (e.g. Llama-3 ``rope_type: llama3``) or ``None``."""
    rms_norm_eps: float
    """RMSNorm epsilon."""
    tie_word_embeddings: bool
    """Whether the output layer shares the embedding matrix."""
    blocks: tuple[BlockConfig, ...]
    """Per-layer architecture."""
    field_style: FieldStyle = "decilm"
    """How block sizes are written to HF: ``decilm`` (n_heads_in_group / ffn_mult) or ``puzzletron``
    (num_key_value_heads / intermediate_size)."""
    hf_extra: Mapping[str, Any] = field(default_factory=dict)
    """Every other top-level HF key (architectures, model_type, bos/eos ids, torch_dtype, ...), verbatim."""
    hf_keys: tuple[str, ...] | None = field(default=None, compare=False)
    """Top-level keys of the source config in their order (``None`` when built in code); for exact write-back."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_attention_heads", "head_dim", "num_hidden_layers", "vocab_size"):
            _check_positive_int(name, getattr(self, name), name)
        _check_positive_int("max_position_embeddings", self.max_position_embeddings, "max_position_embeddings")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise BlockConfigError(name, f"must be a positive number, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise BlockConfigError("tie_word_embeddings", f"must be true or false, got {self.tie_word_embeddings!r}")
        if self.field_style not in _FIELD_STYLES:
            raise BlockConfigError("field_style", f"must be 'decilm' or 'puzzletron', got {self.field_style!r}")
        blocks = tuple(self.blocks)
        if len(blocks) != self.num_hidden_layers:
            raise BlockConfigError(
                "block_configs",
                f"has {len(blocks)} entries but num_hidden_layers is {self.num_hidden_layers}; "
                "there must be exactly one block config per layer",
            )
        for i, block in enumerate(blocks):
            prefix = f"block_configs[{i}]"
            if not isinstance(block, BlockConfig):
                raise BlockConfigError(prefix, f"must be a BlockConfig, got {type(block).__name__}")
            attn, ffn = block.attention, block.ffn
            if attn.kind == "gqa" and self.num_attention_heads % attn.num_key_value_heads:
                raise BlockConfigError(
                    f"{prefix}.attention.num_key_value_heads",
                    f"{attn.num_key_value_heads} KV heads do not divide num_attention_heads "
                    f"({self.num_attention_heads}); valid: {_divisors(self.num_attention_heads)}",
                )
            if ffn.ffn_mult is not None:
                implied = ffn_mult_to_intermediate_size(ffn.ffn_mult, self.hidden_size)
                if implied != ffn.intermediate_size:
                    raise BlockConfigError(
                        f"{prefix}.ffn.ffn_mult",
                        f"ffn_mult {ffn.ffn_mult} gives width {implied} at hidden_size {self.hidden_size}, "
                        f"but intermediate_size is {ffn.intermediate_size} (drop ffn_mult or make them agree)",
                    )
        _set(self, "blocks", blocks)
        _set(self, "rope_scaling", None if self.rope_scaling is None else FrozenMap(self.rope_scaling))
        _set(self, "hf_extra", FrozenMap(self.hf_extra))
        if self.hf_keys is not None:
            _set(self, "hf_keys", tuple(self.hf_keys))
        for key in self.hf_extra:
            if key in _TOP_LEVEL_TYPED or key in ("block_configs", EXTENSION_KEY):
                raise BlockConfigError(key, "is a typed field of PuzzleModelConfig and must not be in hf_extra")

    def kv_heads(self, layer: int) -> int | None:
        """KV heads of ``layer``'s attention, or ``None`` when it is not GQA."""
        return self.blocks[layer].attention.num_key_value_heads

    def ffn_width(self, layer: int) -> int | None:
        """SwiGLU width of ``layer``'s FFN, or ``None`` when it is linear or no-op."""
        return self.blocks[layer].ffn.intermediate_size

    def architecture(self) -> tuple[tuple[str, int | None, str, int | None], ...]:
        """Per layer ``(attention kind, KV heads, FFN kind, FFN width)``: what the model is, without HF spelling.

        Two configs with equal ``architecture()`` and global sizes build the same network even when their HF
        write-back differs (e.g. ``ffn_mult`` 1.0 vs 1.03125 both give width 5632 at hidden 8192).
        """
        return tuple(
            (b.attention.kind, b.attention.num_key_value_heads, b.ffn.kind, b.ffn.intermediate_size)
            for b in self.blocks
        )

    @property
    def num_layers(self) -> int:
        """Same as ``num_hidden_layers``."""
        return self.num_hidden_layers


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's FFN width rule: ``int(2 * ffn_mult * hidden_size / 3)`` rounded up to a multiple of 256.

    >>> ffn_mult_to_intermediate_size(5.25, 8192), ffn_mult_to_intermediate_size(2.625, 8192)
    (28672, 14336)
    """
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // 256) * 256


def intermediate_size_to_ffn_mult(intermediate_size: int, hidden_size: int) -> float | None:
    """An ``ffn_mult`` whose DeciLM width is ``intermediate_size`` (``3 * width / (2 * hidden)`` when that works,
    else the shortest decimal that does), or ``None`` when the width is not a multiple of 256.

    >>> intermediate_size_to_ffn_mult(28672, 8192), intermediate_size_to_ffn_mult(100, 64)
    (5.25, None)
    """
    if intermediate_size % 256:
        return None
    exact = 3 * intermediate_size / (2 * hidden_size)
    if ffn_mult_to_intermediate_size(exact, hidden_size) == intermediate_size:
        return exact
    for digits in range(0, 13):
        candidate = round(exact, digits)
        if candidate > 0 and ffn_mult_to_intermediate_size(candidate, hidden_size) == intermediate_size:
            return float(candidate)
    # Fall back to a value just above the exact one: int() truncation then lands inside the 256-wide bucket.
    candidate = math.nextafter(exact, math.inf)
    if ffn_mult_to_intermediate_size(candidate, hidden_size) == intermediate_size:
        return candidate
    return None


# --------------------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------------------


def _detect_style(attn: Mapping[str, Any], ffn: Mapping[str, Any], path: str) -> FieldStyle | None:
    decilm_only = (set(attn) & (set(_DECILM_ATTENTION_KEYS) - set(_PUZZLETRON_ATTENTION_KEYS))) | (
        set(ffn) & (set(_DECILM_FFN_KEYS) - set(_PUZZLETRON_FFN_KEYS))
    )
    puzzletron_only = (set(attn) & (set(_PUZZLETRON_ATTENTION_KEYS) - set(_DECILM_ATTENTION_KEYS))) | (
        set(ffn) & (set(_PUZZLETRON_FFN_KEYS) - set(_DECILM_FFN_KEYS))
    )
    if decilm_only and puzzletron_only:
        raise BlockConfigError(
            path,
            f"mixes decilm keys {sorted(decilm_only)} with puzzletron keys {sorted(puzzletron_only)}; "
            "use one style (decilm: n_heads_in_group/ffn_mult, puzzletron: num_key_value_heads/intermediate_size)",
        )
    if decilm_only:
        return "decilm"
    if puzzletron_only:
        return "puzzletron"
    return None


def _check_keys(path: str, sub: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = [k for k in sub if k not in known]
    if unknown:
        raise BlockConfigError(
            f"{path}.{unknown[0]}", f"unknown key; known keys in this style: {', '.join(sorted(known))}"
        )


def _flag(path: str, sub: Mapping[str, Any], key: str) -> bool:
    value = sub.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BlockConfigError(f"{path}.{key}", f"must be true or false, got {value!r}")
    return value


def _parse_attention(sub: Any, *, path: str, style: FieldStyle, num_attention_heads: int) -> AttentionConfig:
    if not isinstance(sub, Mapping):
        raise BlockConfigError(path, f"must be a JSON object, got {type(sub).__name__}")
    known = _ATTENTION_KEYS[style]
    _check_keys(path, sub, known)
    no_op = _flag(path, sub, "no_op")
    linear = _flag(path, sub, "replace_with_linear")
    if no_op and linear:
        raise BlockConfigError(
            f"{path}.replace_with_linear", "cannot be true together with no_op (choose one of no_op / linear / gqa)"
        )
    size_key = _ATTENTION_SIZE_KEY[style]
    size = sub.get(size_key)
    kv: int | None = None
    extra: dict[str, Any] = {}
    if no_op or linear:
        kind: AttentionKind = "no_op" if no_op else "linear"
        if size is not None:  # ignored by every reader; keep it verbatim
            extra[size_key] = size
    else:
        kind = "gqa"
        if size is None:
            raise BlockConfigError(
                f"{path}.{size_key}", "is required for a GQA attention (set it, or set no_op / replace_with_linear)"
            )
        _check_positive_int(f"{path}.{size_key}", size, size_key)
        if num_attention_heads % size:
            raise BlockConfigError(
                f"{path}.{size_key}",
                f"{size} does not divide num_attention_heads ({num_attention_heads}); "
                f"valid values: {_divisors(num_attention_heads)}",
            )
        kv = num_attention_heads // size if style == "decilm" else size
    window = sub.get("window_length")
    if window is not None:
        _check_positive_int(f"{path}.window_length", window, "window_length")
    for key, value in sub.items():
        if key in (size_key, "no_op", "replace_with_linear", "window_length"):
            continue
        if key in _UNSUPPORTED_NON_DEFAULT and value is not None:
            raise BlockConfigError(f"{path}.{key}", f"is not supported (only null is), got {value!r}")
        extra[key] = value
    try:
        cfg = AttentionConfig(
            kind=kind, num_key_value_heads=kv, window_length=window, extra=extra, hf_keys=tuple(sub.keys())
        )
    except BlockConfigError as err:
        raise BlockConfigError(path, err.reason) from None
    return cfg


def _parse_ffn(sub: Any, *, path: str, style: FieldStyle, hidden_size: int) -> FFNConfig:
    if not isinstance(sub, Mapping):
        raise BlockConfigError(path, f"must be a JSON object, got {type(sub).__name__}")
    _check_keys(path, sub, _FFN_KEYS[style])
    no_op = _flag(path, sub, "no_op")
    linear = _flag(path, sub, "replace_with_linear")
    if no_op and linear:
        raise BlockConfigError(
            f"{path}.replace_with_linear", "cannot be true together with no_op (choose one of no_op / linear / swiglu)"
        )
    size_key = _FFN_SIZE_KEY[style]
    size = sub.get(size_key)
    extra: dict[str, Any] = {}
    width: int | None = None
    mult: float | None = None
    if no_op or linear:
        kind: FFNKind = "no_op" if no_op else "linear"
        if size is not None:
            extra[size_key] = size
    else:
        kind = "swiglu"
        if size is None:
            raise BlockConfigError(
                f"{path}.{size_key}", "is required for a SwiGLU FFN (set it, or set no_op / replace_with_linear)"
            )
        if style == "decilm":
            if not _is_number(size) or size <= 0:
                raise BlockConfigError(f"{path}.ffn_mult", f"must be a positive number, got {size!r}")
            mult = size
            width = ffn_mult_to_intermediate_size(size, hidden_size)
            if width <= 0:
                raise BlockConfigError(f"{path}.ffn_mult", f"{size} gives FFN width {width} at hidden {hidden_size}")
        else:
            _check_positive_int(f"{path}.intermediate_size", size, "intermediate_size")
            width = size
    for key, value in sub.items():
        if key in (size_key, "no_op", "replace_with_linear"):
            continue
        if key in _UNSUPPORTED_NON_DEFAULT and value is not None:
            raise BlockConfigError(f"{path}.{key}", f"is not supported (only null is), got {value!r}")
        extra[key] = value
    try:
        return FFNConfig(kind=kind, intermediate_size=width, ffn_mult=mult, extra=extra, hf_keys=tuple(sub.keys()))
    except BlockConfigError as err:
        raise BlockConfigError(path, err.reason) from None


def _parse_fused_from(ext: Any, num_layers: int) -> dict[int, tuple[int, ...]]:
    if not isinstance(ext, Mapping):
        raise BlockConfigError(EXTENSION_KEY, f"must be a JSON object, got {type(ext).__name__}")
    for key in ext:
        if key != "fused_from":
            raise BlockConfigError(f"{EXTENSION_KEY}.{key}", "unknown key; known keys: fused_from")
    fused = ext.get("fused_from", {})
    if not isinstance(fused, Mapping):
        raise BlockConfigError(f"{EXTENSION_KEY}.fused_from", "must map layer indices to lists of widths")
    out: dict[int, tuple[int, ...]] = {}
    for key, widths in fused.items():
        path = f"{EXTENSION_KEY}.fused_from[{key!r}]"
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise BlockConfigError(path, 'keys must be layer indices written as strings, e.g. "12"') from None
        if not 0 <= layer < num_layers or str(layer) != str(key):
            raise BlockConfigError(path, f"is not a layer index in 0..{num_layers - 1}")
        if not isinstance(widths, list | tuple):
            raise BlockConfigError(path, f"must be a list of widths, got {widths!r}")
        out[layer] = tuple(widths)
    return out


def parse_hf_config(data: Mapping[str, Any], *, source: str = "<config>") -> PuzzleModelConfig:
    """Parse and validate a Hugging Face config dict with ``block_configs`` (decilm or puzzletron style).

    Args:
        data: the parsed ``config.json``.
        source: a name for error messages (e.g. the file path).

    Returns:
        The validated config; ``to_hf_config`` of it gives back ``data``.

    Raises:
        BlockConfigError: naming ``source`` and the bad field, e.g.
            ``"config.json: block_configs[12].attention.n_heads_in_group: 7 does not divide ..."``.
    """
    try:
        return _parse(data)
    except BlockConfigError as err:
        raise BlockConfigError(f"{source}: {err.path}" if err.path else source, err.reason) from None


def _require(data: Mapping[str, Any], key: str) -> Any:
    if key not in data or data[key] is None:
        raise BlockConfigError(key, "is required")
    return data[key]


def _parse(data: Mapping[str, Any]) -> PuzzleModelConfig:
    if not isinstance(data, Mapping):
        raise BlockConfigError("", f"a config must be a JSON object, got {type(data).__name__}")
    hidden = _require(data, "hidden_size")
    _check_positive_int("hidden_size", hidden, "hidden_size")
    heads = _require(data, "num_attention_heads")
    _check_positive_int("num_attention_heads", heads, "num_attention_heads")
    if data.get("head_dim") is not None:
        head_dim = data["head_dim"]
        _check_positive_int("head_dim", head_dim, "head_dim")
    else:
        if hidden % heads:
            raise BlockConfigError(
                "num_attention_heads", f"{heads} does not divide hidden_size {hidden}; set head_dim explicitly"
            )
        head_dim = hidden // heads
    for key, expected in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if data.get(key) not in (None, expected):
            raise BlockConfigError(
                key, f"only {expected!r} is supported (SwiGLU, bias-free linears), got {data[key]!r}"
            )

    num_layers = _require(data, "num_hidden_layers")
    _check_positive_int("num_hidden_layers", num_layers, "num_hidden_layers")
    raw_blocks = data.get("block_configs")
    style: FieldStyle | None = None
    blocks: list[BlockConfig] = []
    if raw_blocks is None:
        blocks, style = _blocks_from_plain_llama(data, num_layers, heads), "puzzletron"
    else:
        if not isinstance(raw_blocks, list):
            raise BlockConfigError("block_configs", f"must be a list, got {type(raw_blocks).__name__}")
        if len(raw_blocks) != num_layers:
            raise BlockConfigError(
                "block_configs",
                f"has {len(raw_blocks)} entries but num_hidden_layers is {num_layers}; "
                "there must be exactly one block config per layer",
            )
        for i, raw in enumerate(raw_blocks):
            path = f"block_configs[{i}]"
            if not isinstance(raw, Mapping):
                raise BlockConfigError(path, f"must be a JSON object, got {type(raw).__name__}")
            for key in raw:
                if key not in ("attention", "ffn", "parallel_blocks"):
                    raise BlockConfigError(f"{path}.{key}", "unknown key; known keys: attention, ffn, parallel_blocks")
            if raw.get("parallel_blocks") is not None:
                raise BlockConfigError(
                    f"{path}.parallel_blocks",
                    "is not supported (only null); fused FFNs are written as one wide FFN plus "
                    f"the top-level {EXTENSION_KEY}.fused_from record",
                )
            for key in ("attention", "ffn"):
                if key not in raw:
                    raise BlockConfigError(f"{path}.{key}", "is required")
            attn_raw, ffn_raw = raw["attention"], raw["ffn"]
            if isinstance(attn_raw, Mapping) and isinstance(ffn_raw, Mapping):
                block_style = _detect_style(attn_raw, ffn_raw, path)
                if "parallel_blocks" in raw:
                    if block_style == "decilm":
                        raise BlockConfigError(f"{path}.parallel_blocks", "is a puzzletron key in a decilm block")
                    block_style = "puzzletron"
                if block_style is not None:
                    if style is not None and block_style != style:
                        raise BlockConfigError(
                            path, f"is written in {block_style} style but earlier blocks use {style} style"
                        )
                    style = block_style
            block_style = style or "decilm"
            attn = _parse_attention(attn_raw, path=f"{path}.attention", style=block_style, num_attention_heads=heads)
            ffn = _parse_ffn(ffn_raw, path=f"{path}.ffn", style=block_style, hidden_size=hidden)
            blocks.append(_block(attn, ffn, path, tuple(raw.keys())))
        style = style or "decilm"

    if EXTENSION_KEY in data:
        for layer, widths in _parse_fused_from(data[EXTENSION_KEY], num_layers).items():
            path = f"{EXTENSION_KEY}.fused_from[{str(layer)!r}]"
            ffn = blocks[layer].ffn
            if ffn.kind != "swiglu":
                raise BlockConfigError(path, f"layer {layer}'s FFN is {ffn.kind!r}; only a SwiGLU FFN can be fused")
            try:
                new_ffn = dataclasses.replace(ffn, fused_from=widths)
            except BlockConfigError as err:
                raise BlockConfigError(path, err.reason) from None
            blocks[layer] = _block(blocks[layer].attention, new_ffn, f"block_configs[{layer}]", blocks[layer].hf_keys)

    values: dict[str, Any] = {}
    for key in _TOP_LEVEL_TYPED:
        if key == "head_dim":
            values[key] = head_dim
        elif key in _TOP_LEVEL_DEFAULTS:
            values[key] = data[key] if data.get(key) is not None else _rope_parameters_value(data, key)
            if key == "rope_scaling" and values[key] is not None and not isinstance(values[key], Mapping):
                raise BlockConfigError(key, f"must be an object or null, got {values[key]!r}")
        else:
            values[key] = _require(data, key)
    hf_extra = {
        k: v for k, v in data.items() if k not in _TOP_LEVEL_TYPED and k not in ("block_configs", EXTENSION_KEY)
    }
    return PuzzleModelConfig(
        **values,
        blocks=tuple(blocks),
        field_style=style,
        hf_extra=hf_extra,
        hf_keys=tuple(data.keys()),
    )


def _rope_parameters_value(data: Mapping[str, Any], key: str) -> Any:
    """Default for a missing top-level key, reading transformers 5's ``rope_parameters`` for the RoPE settings.

    transformers 5.x saves the RoPE base only as ``rope_parameters.rope_theta`` (and the scaling type there too);
    falling back to LlamaConfig's 10000 would silently change the model.
    """
    rope = data.get("rope_parameters")
    if isinstance(rope, Mapping):
        if key == "rope_theta" and rope.get("rope_theta") is not None:
            return float(rope["rope_theta"])
        if key == "rope_scaling" and rope.get("rope_type", "default") != "default":
            return dict(rope)
    return _TOP_LEVEL_DEFAULTS[key]


def _block(attn: AttentionConfig, ffn: FFNConfig, path: str, hf_keys: tuple[str, ...] | None) -> BlockConfig:
    try:
        return BlockConfig(attention=attn, ffn=ffn, hf_keys=hf_keys)
    except BlockConfigError as err:
        raise err.under(path) from None


def _blocks_from_plain_llama(data: Mapping[str, Any], num_layers: int, heads: int) -> list[BlockConfig]:
    kv = data.get("num_key_value_heads")
    kv = heads if kv is None else kv
    _check_positive_int("num_key_value_heads", kv, "num_key_value_heads")
    if heads % kv:
        raise BlockConfigError(
            "num_key_value_heads", f"{kv} does not divide num_attention_heads ({heads}); valid: {_divisors(heads)}"
        )
    width = _require(data, "intermediate_size")
    _check_positive_int("intermediate_size", width, "intermediate_size")
    block = BlockConfig(attention=AttentionConfig.gqa(kv), ffn=FFNConfig.swiglu(width))
    return [block] * num_layers


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _other_style(style: FieldStyle) -> FieldStyle:
    return "puzzletron" if style == "decilm" else "decilm"


def _ordered_keys(hf_keys: tuple[str, ...] | None, known: Mapping[str, Any], required: Sequence[str]) -> list[str]:
    """Source key order when it fits ``known`` (exact round trips), else the style's canonical order."""
    if hf_keys is not None and all(k in known for k in hf_keys):
        return list(hf_keys) + [k for k in required if k not in hf_keys]
    return list(known)


def _extra_values(
    extra: Mapping[str, Any],
    *,
    style: FieldStyle,
    known: Mapping[str, Any],
    other_known: Mapping[str, Any],
    typed: set[str],
    path: str,
) -> dict[str, Any]:
    """The ``extra`` entries to write in ``style``: its own keys verbatim, the other style's defaults dropped."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key in known and key not in typed:
            out[key] = value
        elif key in typed:
            continue  # a size key kept on a no_op/linear sub-block: meaningless in the other style
        elif value == other_known.get(key, object()):
            continue  # the other style's default: nothing is lost by dropping it
        else:
            raise BlockConfigError(
                f"{path}.{key}", f"value {_thaw(value)!r} cannot be written in {style} style (only its default can)"
            )
    return out


def _attention_to_hf(attn: AttentionConfig, *, style: FieldStyle, path: str, num_heads: int) -> dict[str, Any]:
    known = _ATTENTION_KEYS[style]
    size_key = _ATTENTION_SIZE_KEY[style]
    typed = {"n_heads_in_group", "num_key_value_heads", "no_op", "replace_with_linear", "window_length"}
    values = _extra_values(
        attn.extra,
        style=style,
        known=known,
        other_known=_ATTENTION_KEYS[_other_style(style)],
        typed=typed,
        path=path,
    )
    values["no_op"] = attn.kind == "no_op"
    values["replace_with_linear"] = attn.kind == "linear"
    required = []
    if attn.kind == "gqa":
        kv = attn.num_key_value_heads
        values[size_key] = num_heads // kv if style == "decilm" else kv
        required.append(size_key)
    else:
        # Keep a verbatim size value of a no_op/linear sub-block only in its own style.
        values[size_key] = attn.extra.get(size_key) if size_key in attn.extra else None
        required.append("no_op" if attn.kind == "no_op" else "replace_with_linear")
    if attn.window_length is not None:
        if "window_length" not in known:
            raise BlockConfigError(f"{path}.window_length", f"a sliding window cannot be written in {style} style")
        values["window_length"] = attn.window_length
        required.append("window_length")
    required += [k for k in values if k not in required and k in attn.extra]
    keys = _ordered_keys(attn.hf_keys, known, required)
    return {k: _thaw(values.get(k, known[k])) for k in keys}


def _ffn_to_hf(ffn: FFNConfig, *, style: FieldStyle, path: str, hidden_size: int) -> dict[str, Any]:
    known = _FFN_KEYS[style]
    size_key = _FFN_SIZE_KEY[style]
    typed = {"ffn_mult", "intermediate_size", "no_op", "replace_with_linear"}
    values = _extra_values(
        ffn.extra, style=style, known=known, other_known=_FFN_KEYS[_other_style(style)], typed=typed, path=path
    )
    values["no_op"] = ffn.kind == "no_op"
    values["replace_with_linear"] = ffn.kind == "linear"
    required = []
    if ffn.kind == "swiglu":
        width = ffn.intermediate_size
        if style == "decilm":
            mult = ffn.ffn_mult if ffn.ffn_mult is not None else intermediate_size_to_ffn_mult(width, hidden_size)
            if mult is None:
                raise BlockConfigError(
                    f"{path}.intermediate_size",
                    f"width {width} has no decilm ffn_mult at hidden_size {hidden_size} (decilm widths are "
                    "int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256); write puzzletron style instead",
                )
            values[size_key] = mult
        else:
            values[size_key] = width
        required.append(size_key)
    else:
        values[size_key] = ffn.extra.get(size_key) if size_key in ffn.extra else None
        required.append("no_op" if ffn.kind == "no_op" else "replace_with_linear")
    required += [k for k in values if k not in required and k in ffn.extra]
    keys = _ordered_keys(ffn.hf_keys, known, required)
    return {k: _thaw(values.get(k, known[k])) for k in keys}


def _block_to_hf(block: BlockConfig, *, style: FieldStyle, index: int, cfg: PuzzleModelConfig) -> dict[str, Any]:
    path = f"block_configs[{index}]"
    out = {
        "attention": _attention_to_hf(
            block.attention, style=style, path=f"{path}.attention", num_heads=cfg.num_attention_heads
        ),
        "ffn": _ffn_to_hf(block.ffn, style=style, path=f"{path}.ffn", hidden_size=cfg.hidden_size),
    }
    # Keep the source's choice of writing ``parallel_blocks`` only when the source was puzzletron style.
    from_puzzletron = all(
        sub.hf_keys is not None and all(k in known for k in sub.hf_keys)
        for sub, known in ((block.attention, _PUZZLETRON_ATTENTION_KEYS), (block.ffn, _PUZZLETRON_FFN_KEYS))
    )
    if block.hf_keys is not None and from_puzzletron:
        has_parallel = "parallel_blocks" in block.hf_keys
    else:
        has_parallel = style == "puzzletron"
    if style == "puzzletron" and has_parallel:
        out["parallel_blocks"] = None
    if block.hf_keys is not None and list(block.hf_keys) == [k for k in block.hf_keys if k in out]:
        out = {k: out[k] for k in block.hf_keys} | {k: v for k, v in out.items() if k not in block.hf_keys}
    return out


def to_hf_config(cfg: PuzzleModelConfig, *, field_style: str | None = None) -> dict[str, Any]:
    """Write ``cfg`` as a Hugging Face config dict (JSON-ready).

    Args:
        cfg: the config.
        field_style: ``"decilm"`` or ``"puzzletron"``; default: the style ``cfg`` was parsed from.

    Returns:
        A new dict. For a parsed config in its own style it equals the source dict, key order included.

    Raises:
        BlockConfigError: when something cannot be written in the requested style (e.g. an FFN width with no
            decilm ``ffn_mult``), naming the block and field.
    """
    style = cfg.field_style if field_style is None else field_style
    if style not in _FIELD_STYLES:
        raise BlockConfigError("field_style", f"must be 'decilm' or 'puzzletron', got {style!r}")
    blocks = [_block_to_hf(b, style=style, index=i, cfg=cfg) for i, b in enumerate(cfg.blocks)]
    fused = {str(i): list(b.ffn.fused_from) for i, b in enumerate(cfg.blocks) if b.ffn.fused_from is not None}

    source_keys = set(cfg.hf_keys) if cfg.hf_keys is not None else None
    implied_head_dim = cfg.hidden_size // cfg.num_attention_heads
    top: dict[str, Any] = {}
    for key in _TOP_LEVEL_TYPED:
        value = getattr(cfg, key)
        if key == "head_dim":
            emit = value != implied_head_dim or cfg.hidden_size % cfg.num_attention_heads != 0
        elif key in _TOP_LEVEL_DEFAULTS:
            emit = source_keys is None or value != _TOP_LEVEL_DEFAULTS[key]
        else:
            emit = True
        if emit or (source_keys is not None and key in source_keys):
            top[key] = _thaw(value)
    top.update({k: _thaw(v) for k, v in cfg.hf_extra.items()})
    top["block_configs"] = blocks
    if fused:
        top[EXTENSION_KEY] = {"fused_from": fused}

    if cfg.hf_keys is None:
        return {k: top[k] for k in sorted(top)}
    ordered = {k: top[k] for k in cfg.hf_keys if k in top}
    ordered.update({k: v for k, v in top.items() if k not in ordered})
    return ordered


def save_hf_config(cfg: PuzzleModelConfig, path: str | os.PathLike, *, field_style: str | None = None) -> None:
    """Write ``cfg`` as ``config.json`` (``path`` is the file, or a directory that gets ``config.json``).

    The file is written atomically (temporary file + rename) with 2-space indentation, like transformers does.
    """
    target = Path(path)
    if target.is_dir():
        target = target / "config.json"
    text = json.dumps(to_hf_config(cfg, field_style=field_style), indent=2) + "\n"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def load_hf_config(path: str | os.PathLike) -> PuzzleModelConfig:
    """Load and validate a ``config.json`` (or a checkpoint directory containing one).

    Raises:
        BlockConfigError: the file is missing, is not valid JSON (the message gives line and column), or is not a
            valid Puzzle config (the message names the file and the bad field).
    """
    target = Path(path)
    if target.is_dir():
        target = target / "config.json"
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BlockConfigError(
            str(target), "no such file (expected a config.json or a checkpoint directory)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BlockConfigError(str(target), f"cannot read: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BlockConfigError(
            str(target), f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    return parse_hf_config(data, source=str(target))


_DECILM_HF_EXTRA: dict[str, Any] = {
    "architectures": ["DeciLMForCausalLM"],
    "model_type": "nemotron-nas",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "intermediate_size": None,
    "num_key_value_heads": None,
    "torch_dtype": "bfloat16",
}
_PUZZLETRON_HF_EXTRA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
}


def make_config(
    *,
    hidden_size: int,
    num_attention_heads: int,
    vocab_size: int,
    blocks: Sequence[BlockConfig],
    **overrides: Any,
) -> PuzzleModelConfig:
    """Build a config in code (tests, recipes).

    Defaults: ``head_dim = hidden_size // num_attention_heads``, ``num_hidden_layers = len(blocks)``,
    ``max_position_embeddings=4096``, ``rope_theta=10000.0``, ``rope_scaling=None``, ``rms_norm_eps=1e-5``,
    ``tie_word_embeddings=False``, ``field_style``: ``"decilm"`` when every FFN width has an ``ffn_mult``, else
    ``"puzzletron"``; ``hf_extra``: the usual top-level keys of that style (architectures, model_type, ...).

    Args:
        hidden_size: model width.
        num_attention_heads: query heads.
        vocab_size: vocabulary size.
        blocks: one :class:`BlockConfig` per layer.
        **overrides: any other :class:`PuzzleModelConfig` field.

    Example:
        >>> cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=[
        ...     BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(256)),
        ...     BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.swiglu(128))])
        >>> cfg.num_hidden_layers, cfg.kv_heads(0), cfg.ffn_width(1), cfg.field_style
        (2, 2, 128, 'puzzletron')
    """
    blocks = tuple(blocks)
    if "field_style" not in overrides:
        representable = all(
            b.ffn.kind != "swiglu"
            or b.ffn.ffn_mult is not None
            or intermediate_size_to_ffn_mult(b.ffn.intermediate_size, hidden_size) is not None
            for b in blocks
        )
        overrides["field_style"] = "decilm" if representable else "puzzletron"
    if "hf_extra" not in overrides:
        extra = _DECILM_HF_EXTRA if overrides["field_style"] == "decilm" else _PUZZLETRON_HF_EXTRA
        overrides["hf_extra"] = dict(extra)
    values: dict[str, Any] = {
        "head_dim": hidden_size // num_attention_heads if num_attention_heads > 0 else 0,
        "num_hidden_layers": len(blocks),
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    values.update(overrides)
    return PuzzleModelConfig(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        vocab_size=vocab_size,
        blocks=blocks,
        **values,
    )


def reject_unimplemented(cfg: PuzzleModelConfig, *, source: str = "") -> None:
    """Raise when ``cfg`` uses a feature the Megatron Puzzle model does not implement.

    Parsing keeps these fields (round trips, cost estimates), but a model built or loaded from such a config would
    silently compute something else, so every builder and loader calls this first. Today that is DeciLM's
    ``window_length`` (sliding-window attention): the Megatron layers attend over the full causal context.

    Args:
        cfg: The config.
        source: Where it came from (a file path), put in front of the message.

    Raises:
        BlockConfigError: naming the layer and field, e.g.
            ``"config.json: block_configs[3].attention.window_length: sliding-window attention ..."``.
    """
    for i, block in enumerate(cfg.blocks):
        window = block.attention.window_length
        if window is not None:
            path = f"block_configs[{i}].attention.window_length"
            raise BlockConfigError(
                f"{source}: {path}" if source else path,
                f"sliding-window attention (window_length={window}, layer {i}) is not implemented by the Megatron "
                "Puzzle model, which attends over the full causal context; set window_length to null to train this "
                "layer with full attention (that changes the model), or use a config without sliding windows",
            )


def to_megatron_block_configs(cfg: PuzzleModelConfig) -> dict[str, Any]:
    """The ``{"block_configs": [...]}`` dict megatron-core's ``HeterogeneousTransformerConfig`` reads natively.

    It uses megatron's own keys (``num_query_groups``, ``ffn_hidden_size``; the FFN sub-dict is ``mlp``), so any
    width works, including the tiny ones that have no decilm ``ffn_mult``. Pass ``json.dumps`` of it as
    ``heterogeneous_layers_config_encoded_json``.

    Raises:
        BlockConfigError: ``cfg`` uses a feature the model does not implement (:func:`reject_unimplemented`).
    """
    reject_unimplemented(cfg)
    return {
        "block_configs": [
            {
                "attention": {
                    "no_op": b.attention.kind == "no_op",
                    "replace_with_linear": b.attention.kind == "linear",
                    "num_query_groups": b.attention.num_key_value_heads,
                },
                "mlp": {
                    "no_op": b.ffn.kind == "no_op",
                    "replace_with_linear": b.ffn.kind == "linear",
                    "ffn_hidden_size": b.ffn.intermediate_size,
                },
            }
            for b in cfg.blocks
        ]
    }
