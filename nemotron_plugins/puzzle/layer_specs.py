"""megatron-core ``ModuleSpec``s for heterogeneous ("Puzzle") decoder layers, local (CPU) or Transformer Engine.

Each layer of a :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` picks its attention (GQA with its
own KV-head count, a linear replacement, or no-op) and its FFN (SwiGLU of its own width, a fused FFN, a linear
replacement, or no-op). The specs are megatron-core's own heterogeneous specs
(``megatron.core.models.gpt.heterogeneous.get_gpt_heterogeneous_layer_spec``) driven by a
``HeterogeneousTransformerConfig`` (built by :func:`nemotron_plugins.puzzle.model.puzzle_transformer_config`); this
module adds what they lack: an RMSNorm that works with sequence parallelism (:class:`PuzzleRMSNorm`; megatron's
local ``WrappedTorchNorm`` asserts ``sequence_parallel`` is off), linear replacements whose output gather is correct
under sequence parallelism (megatron 0.16.1 pads the wrong dimension there), a check of every layer against the parallel layout (KV heads and FFN widths divisible by
TP, naming the layer), an explicit Transformer Engine choice with an honest error where TE is missing, and the
documentation below. Per-layer KV heads need nothing more: megatron builds each layer from
``config.get_config_for_layer(n)``, whose ``num_query_groups`` is that layer's KV-head count, and ``SelfAttention``
splits those groups over TP ranks (checked: TP=2 reproduces TP=1 exactly).

Registered in :data:`nemotron_plugins.registry.LAYER_SPECS` as ``"puzzle_local"`` (:func:`puzzle_local_layer_spec`),
``"puzzle_sdpa"`` (:func:`puzzle_sdpa_layer_spec`: local modules with torch SDPA core attention, the default without
TE) and ``"puzzle_te"`` (:func:`puzzle_te_layer_spec`); all take ``(config, *, vp_stage=None, pp_rank=None)`` and
return the ``TransformerBlockSubmodules`` of the layers on that pipeline stage.

State-dict names and layouts
----------------------------
``puzzle_sdpa`` and ``puzzle_local`` differ only in the parameter-free core attention, so "local spec" below covers
both (their checkpoints are interchangeable).
Names below are relative to a ``GPTModel`` (what ``model.state_dict()`` gives, without ``module.`` prefixes added by
DDP wrappers). ``N`` is the layer index *local to the pipeline stage*; the global index is
``model.decoder.layers[N].layer_number - 1``. ``H`` = hidden size, ``d`` = head dim, ``q`` = attention heads,
``g`` = KV heads (query groups) of that layer, ``F`` = FFN width of that layer, ``V`` = padded vocab, ``t`` = TP
size. Shapes are per TP rank. No tensor has a bias. Norm weights are RMSNorm weights of shape ``[H]``, replicated
over TP.

Model level::

    embedding.word_embeddings.weight      [V/t, H]   first stage; rows of vocab shard r = [r*V/t, (r+1)*V/t)
    decoder.final_layernorm.weight        [H]        last stage
    output_layer.weight                   [V/t, H]   last stage, absent when embeddings are tied (except on a
                                                     last stage that does not hold the embedding, where it is a copy)

GQA attention (``kind == "gqa"``)::

    decoder.layers.N.input_layernorm.weight                [H]            local spec
    decoder.layers.N.self_attention.linear_qkv.layer_norm_weight  [H]     TE spec (norm fused into the QKV linear)
    decoder.layers.N.self_attention.linear_qkv.weight      [(q + 2g) * d / t, H]
    decoder.layers.N.self_attention.linear_proj.weight     [H, q * d / t]

``linear_qkv`` rows are grouped by query group: for each of this rank's ``g/t`` groups (global groups
``r*g/t ... (r+1)*g/t - 1``), its ``q/g`` query heads (``d`` rows each), then that group's key head (``d`` rows),
then its value head (``d`` rows). With HF ``q_proj`` ``[q*d, H]``, ``k_proj``/``v_proj`` ``[g*d, H]``: group ``j``
is ``q_proj[j*(q/g)*d : (j+1)*(q/g)*d]``, ``k_proj[j*d:(j+1)*d]``, ``v_proj[j*d:(j+1)*d]``. ``linear_proj`` columns
of rank ``r`` are the heads of its groups (HF ``o_proj[:, r*q*d/t : (r+1)*q*d/t]``).

Linear attention (``kind == "linear"``, HF ``self_attn.linear_attn.weight`` ``[H, H]``)::

    decoder.layers.N.input_layernorm.weight                [H]            local spec
    decoder.layers.N.self_attention.layer_norm_weight      [H]            TE spec
    decoder.layers.N.self_attention.weight                 [H/t, H]       column-parallel rows r*H/t..(r+1)*H/t;
                                                                          the output is gathered over TP

SwiGLU FFN (``kind == "swiglu"``, fused FFNs included)::

    decoder.layers.N.pre_mlp_layernorm.weight              [H]            local spec
    decoder.layers.N.mlp.linear_fc1.layer_norm_weight      [H]            TE spec
    decoder.layers.N.mlp.linear_fc1.weight                 [2F/t, H]      = cat(gate_shard_r, up_shard_r), where
                                                                          gate_shard_r = gate_proj[r*F/t:(r+1)*F/t]
    decoder.layers.N.mlp.linear_fc2.weight                 [H, F/t]       down_proj[:, r*F/t:(r+1)*F/t]

The FFN computes ``fc2(silu(gate) * up)``. A fused FFN (``fused_from=(F1, F2, ...)``, FFN Fusion) is exactly this
SwiGLU with ``F = F1 + F2 + ...``: its gate/up rows and down columns are the parallel FFNs' concatenated in
``fused_from`` order (the TP split above is applied to the concatenated width, so one rank may hold parts of two
fused FFNs).

Linear FFN (``kind == "linear"``, HF ``mlp.linear_mlp.weight`` ``[H, H]``)::

    decoder.layers.N.pre_mlp_layernorm.weight              [H]            local spec
    decoder.layers.N.mlp.layer_norm_weight                 [H]            TE spec
    decoder.layers.N.mlp.weight                            [H/t, H]       column-parallel, output gathered

No-op attention / FFN: no tensors at all (no norm either); the sub-block is the identity and adds no residual.

Every linear also has an ``..._extra_state`` entry (``None`` for local modules, FP8 metadata with TE), e.g.
``decoder.layers.N.self_attention.linear_qkv._extra_state``, ``decoder.layers.N.mlp._extra_state``,
``output_layer._extra_state``; converters skip them (load with ``strict=False`` or keep the model's own values).

The RoPE inverse frequencies are not in the state dict (computed from ``rope_theta`` / ``rope_scaling``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

__all__ = [
    "LayerSpecError",
    "PuzzleRMSNorm",
    "have_transformer_engine",
    "puzzle_layer_spec",
    "puzzle_local_layer_spec",
    "puzzle_sdpa_layer_spec",
    "puzzle_te_layer_spec",
    "validate_layers_for_parallel",
]


class LayerSpecError(ValueError):
    """A layer does not fit the requested parallel layout or module implementation."""


class PuzzleRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm built from a megatron config, usable with sequence parallelism.

    megatron-core's ``WrappedTorchNorm`` (the local heterogeneous spec's norm) refuses ``sequence_parallel=True``
    because nothing would all-reduce its weight gradient over TP. This norm marks its weight
    ``sequence_parallel`` so megatron's ``finalize_model_grads`` sums those gradients over the TP group, exactly as
    for TE's norms. Its state-dict name is ``weight``, as for ``WrappedTorchNorm``.

    Args:
        config: megatron ``TransformerConfig`` (``sequence_parallel``, ``normalization`` must be ``"RMSNorm"``).
        hidden_size: Normalised width.
        eps: Epsilon (megatron passes ``config.layernorm_epsilon``).
        **kwargs: Other arguments megatron passes to norms (ignored: ``persist_layer_norm``, ...).
    """

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **kwargs: Any) -> None:
        if config.normalization != "RMSNorm":
            raise LayerSpecError(f"PuzzleRMSNorm needs normalization='RMSNorm', got {config.normalization!r}")
        if getattr(config, "layernorm_zero_centered_gamma", False):
            raise LayerSpecError("PuzzleRMSNorm does not support layernorm_zero_centered_gamma")
        super().__init__(normalized_shape=hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = bool(config.sequence_parallel)


def gather_linear_replacement_output(x: torch.Tensor, config: Any) -> torch.Tensor:
    """Gather a column-parallel linear replacement's output ``[s, b, H/t]`` into the layer's output layout.

    Without sequence parallelism: all-gather over TP along the hidden dim -> ``[s, b, H]``. With it: place this
    rank's hidden slice in a zero ``[s, b, H]`` tensor and reduce-scatter along the sequence -> ``[s/t, b, H]``.
    (megatron-core 0.16.1's ``_gather_from_tensor_parallel_region`` pads the sequence dim instead of the hidden dim
    here, so linear replacements fail with sequence parallelism; this is the corrected version.)
    """
    from megatron.core.parallel_state import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
    from megatron.core.tensor_parallel.mappings import (
        gather_from_tensor_model_parallel_region,
        reduce_scatter_to_sequence_parallel_region,
    )

    tp = get_tensor_model_parallel_world_size()
    if tp == 1:
        return x
    if not config.sequence_parallel:
        return gather_from_tensor_model_parallel_region(x)
    width = x.shape[-1]
    before = get_tensor_model_parallel_rank() * width
    x = torch.nn.functional.pad(x, (before, config.hidden_size - before - width))
    return reduce_scatter_to_sequence_parallel_region(x)


def _linear_replacement_classes() -> dict[type, type]:
    """megatron's linear-replacement modules -> ours (same parameters and names, corrected output gather)."""
    from megatron.core.transformer.heterogeneous import linear_replacements as lr

    class PuzzleLinearReplacement(lr.ColumnParallelLinearGathered):
        """A linear attention / FFN replacement (local modules): ``[H/t, H]`` column-parallel, output gathered."""

        def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None, **kwargs: Any) -> Any:
            out, bias = lr.ColumnParallelLinear.forward(self, input_, weight)
            return gather_linear_replacement_output(out, self.config), bias

    mapping: dict[type, type] = {lr.ColumnParallelLinearGathered: PuzzleLinearReplacement}
    if getattr(lr, "HAVE_TE", False):

        class PuzzleTELinearReplacement(lr.TELayerNormColumnParallelLinearGathered):
            """A linear replacement with TE's fused norm + column-parallel linear, output gathered."""

            def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
                out, bias = lr.TELayerNormColumnParallelLinear.forward(self, x)
                return gather_linear_replacement_output(out, self.config), bias

        mapping[lr.TELayerNormColumnParallelLinearGathered] = PuzzleTELinearReplacement
    return mapping


@functools.cache
def _puzzle_layer_class() -> type:
    """megatron's ``TransformerLayer`` whose SwiGLU MLP runs :func:`~nemotron_plugins.puzzle.fused_swiglu.fused_swiglu`.

    The MLP is built by megatron as its own ``MLP`` (so the layer hands it its TP group, which it does only for that
    exact class) and then retyped to :class:`~nemotron_plugins.puzzle.fused_swiglu.PuzzleMLP`, a subclass that adds
    no state and only overrides ``forward``; parameters and state-dict names are megatron's.
    """
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from nemotron_plugins.puzzle.fused_swiglu import PuzzleMLP

    attention_class = _rotated_cache_attention_class()

    class PuzzleTransformerLayer(TransformerLayer):
        """megatron's ``TransformerLayer`` with :class:`PuzzleMLP` in place of ``MLP`` and a ``SelfAttention`` that
        caches rotated keys in static-batch decoding (:func:`_rotated_cache_attention_class`)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if type(self.mlp) is MLP:
                self.mlp.__class__ = PuzzleMLP
            if type(self.self_attention) is SelfAttention:
                self.self_attention.__class__ = attention_class

    return PuzzleTransformerLayer


@functools.cache
def _rotated_cache_attention_class() -> type:
    """megatron's ``SelfAttention`` whose static-batch KV cache holds keys with RoPE already applied.

    megatron-core 0.16 stores un-rotated keys in the static inference cache and rotates the whole cache again at every
    decoding step (O(sequence) RoPE work per step and layer; 30% of a tiny-model GRPO step on CPU). Here the new keys
    are rotated once, at their own positions, before they are stored, and the key part of the rotary embedding is
    dropped, as megatron's dynamic-batching path does. Training and the no-cache forward are unchanged; the values
    are the same elementwise operations on the same positions. Only ``_adjust_key_value_for_inference`` is
    overridden (no state: the layer keeps megatron's parameters and state-dict names).
    """
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.transformer import attention as megatron_attention

    class RotatedCacheSelfAttention(megatron_attention.SelfAttention):
        """``SelfAttention`` that stores rotated keys in the static inference cache."""

        def _adjust_key_value_for_inference(  # type: ignore[override]
            self,
            inference_context: Any,
            query: Any,
            key: Any,
            value: Any,
            rotary_pos_emb: Any,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            static = inference_context is not None and inference_context.is_static_batching()
            if not static or self.config.flash_decode or not isinstance(rotary_pos_emb, tuple):
                return super()._adjust_key_value_for_inference(
                    inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
                )
            start = inference_context.sequence_len_offset
            key = apply_rotary_pos_emb(
                key,
                rotary_pos_emb[1][start : start + key.size(0)],
                config=self.config,
                mscale=megatron_attention._yarn_get_concentration_factor_from_config(self.config),
                cp_group=self.pg_collection.cp,
            )
            query, key, value, rotary_pos_emb, mask_type, block_table = super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
            )
            return query, key, value, (rotary_pos_emb[0], None), mask_type, block_table

    return RotatedCacheSelfAttention


def _patched_block_spec(block: Any, *, use_te: bool, core_attention: type | None = None) -> Any:
    """Swap in :class:`PuzzleRMSNorm` (local specs), the corrected linear replacements (both),
    the layer class whose MLP is :class:`~nemotron_plugins.puzzle.fused_swiglu.PuzzleMLP` (its fused SwiGLU compiled
    per FFN width) and, when given, the core attention class of every GQA layer (replacing megatron's local
    ``DotProductAttention``)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import TransformerLayer

    replacements = _linear_replacement_classes()
    layer_class = _puzzle_layer_class()

    def norm(module: Any) -> Any:
        return PuzzleRMSNorm if module is WrappedTorchNorm and not use_te else module

    def sub_block(spec: Any) -> Any:
        new = replacements.get(getattr(spec, "module", None))
        return dataclasses.replace(spec, module=new) if new is not None else spec

    def attention(spec: Any) -> Any:
        spec = sub_block(spec)
        inner = getattr(spec, "submodules", None)
        if core_attention is None or getattr(inner, "core_attention", None) is not DotProductAttention:
            return spec
        return dataclasses.replace(spec, submodules=dataclasses.replace(inner, core_attention=core_attention))

    layer_specs = []
    for spec in block.layer_specs:
        sub = dataclasses.replace(
            spec.submodules,
            input_layernorm=norm(spec.submodules.input_layernorm),
            pre_mlp_layernorm=norm(spec.submodules.pre_mlp_layernorm),
            self_attention=attention(spec.submodules.self_attention),
            mlp=sub_block(spec.submodules.mlp),
        )
        module = layer_class if spec.module is TransformerLayer else spec.module
        layer_specs.append(dataclasses.replace(spec, module=module, submodules=sub))
    return dataclasses.replace(block, layer_specs=layer_specs, layer_norm=norm(block.layer_norm))


def have_transformer_engine() -> bool:
    """Whether Transformer Engine and megatron-core's TE modules import here (never true on a CPU-only machine)."""
    try:
        from megatron.core.models.gpt.heterogeneous import heterogeneous_layer_specs as specs
    except ImportError:
        return False
    return bool(getattr(specs, "HAVE_TE", False))


def validate_layers_for_parallel(config: Any) -> None:
    """Check every layer of a ``HeterogeneousTransformerConfig`` against its tensor-parallel size.

    Args:
        config: megatron ``HeterogeneousTransformerConfig`` (``per_block_parameters`` filled).

    Raises:
        LayerSpecError: naming the layer and the size that is not divisible by TP, and what would be valid.
    """
    tp = config.tensor_model_parallel_size
    if config.num_attention_heads % tp:
        raise LayerSpecError(
            f"num_attention_heads={config.num_attention_heads} is not divisible by tensor_model_parallel_size={tp}"
        )
    if config.hidden_size % tp:
        raise LayerSpecError(f"hidden_size={config.hidden_size} is not divisible by tensor_model_parallel_size={tp}")
    for index, block in enumerate(config.per_block_parameters):
        groups = block.attention.num_query_groups
        if groups is not None and groups % tp:
            valid = [d for d in range(1, config.num_attention_heads + 1) if config.num_attention_heads % d == 0]
            raise LayerSpecError(
                f"layer {index}: {groups} KV heads are not divisible by tensor_model_parallel_size={tp}; every GQA "
                f"layer's KV heads must be a multiple of TP (KV heads dividing {config.num_attention_heads} heads: "
                f"{valid})"
            )
        width = block.mlp.ffn_hidden_size
        if width is not None and int(width) % tp:
            raise LayerSpecError(
                f"layer {index}: FFN width {width} is not divisible by tensor_model_parallel_size={tp}"
            )


def puzzle_layer_spec(
    config: Any,
    *,
    use_transformer_engine: bool = False,
    core_attention: str = "local",
    vp_stage: int | None = None,
    pp_rank: int | None = None,
) -> Any:
    """The ``TransformerBlockSubmodules`` for the layers of ``config`` on one pipeline stage.

    Args:
        config: megatron ``HeterogeneousTransformerConfig``.
        use_transformer_engine: Use TE modules (fused norm + linear, TE attention). Needs TE and CUDA.
        core_attention: With local modules: ``"local"`` (megatron's ``DotProductAttention``) or ``"sdpa"``
            (:class:`nemotron_plugins.puzzle.attention.SDPACoreAttention`). Ignored with TE.
        vp_stage: Virtual pipeline stage (``None`` without virtual pipelining).
        pp_rank: Pipeline rank (``None``: this process's rank).

    Returns:
        megatron ``TransformerBlockSubmodules`` (one ``ModuleSpec`` per layer on the stage, plus the final norm).

    Raises:
        LayerSpecError: TE requested but not installed, or a layer that does not fit the TP size.
    """
    from megatron.core.models.gpt.heterogeneous.heterogeneous_layer_specs import get_gpt_heterogeneous_layer_spec

    if use_transformer_engine and not have_transformer_engine():
        raise LayerSpecError(
            "use_transformer_engine=True but Transformer Engine is not importable here (it needs CUDA); "
            "use the 'puzzle_local' layer spec (megatron-core's local modules) on CPU"
        )
    if config.normalization != "RMSNorm":
        raise LayerSpecError(f"Puzzle models use RMSNorm, got normalization={config.normalization!r}")
    if core_attention not in ("local", "sdpa"):
        raise LayerSpecError(f"core_attention must be 'local' or 'sdpa', got {core_attention!r}")
    if config.context_parallel_size > 1 and not use_transformer_engine and core_attention == "local":
        raise LayerSpecError(
            f"context_parallel_size={config.context_parallel_size}: megatron-core's local attention has no context "
            "parallelism; use the 'puzzle_sdpa' layer spec (K/V all-gathered over CP) or 'puzzle_te'"
        )
    validate_layers_for_parallel(config)
    block = get_gpt_heterogeneous_layer_spec(config, use_te=use_transformer_engine, vp_stage=vp_stage, pp_rank=pp_rank)
    attention_class = None
    if core_attention == "sdpa" and not use_transformer_engine:
        from nemotron_plugins.puzzle.attention import SDPACoreAttention

        attention_class = SDPACoreAttention
    return _patched_block_spec(block, use_te=use_transformer_engine, core_attention=attention_class)


def puzzle_local_layer_spec(config: Any, *, vp_stage: int | None = None, pp_rank: int | None = None) -> Any:
    """:func:`puzzle_layer_spec` with megatron-core's local (non-TE) modules: torch RMSNorm, local attention."""
    return puzzle_layer_spec(config, use_transformer_engine=False, vp_stage=vp_stage, pp_rank=pp_rank)


def puzzle_sdpa_layer_spec(config: Any, *, vp_stage: int | None = None, pp_rank: int | None = None) -> Any:
    """:func:`puzzle_layer_spec` with local modules and torch SDPA core attention
    (:class:`~nemotron_plugins.puzzle.attention.SDPACoreAttention`): the default without Transformer Engine."""
    return puzzle_layer_spec(
        config, use_transformer_engine=False, core_attention="sdpa", vp_stage=vp_stage, pp_rank=pp_rank
    )


def puzzle_te_layer_spec(config: Any, *, vp_stage: int | None = None, pp_rank: int | None = None) -> Any:
    """:func:`puzzle_layer_spec` with Transformer Engine modules (GPU only; raises :class:`LayerSpecError` without
    TE)."""
    return puzzle_layer_spec(config, use_transformer_engine=True, vp_stage=vp_stage, pp_rank=pp_rank)
