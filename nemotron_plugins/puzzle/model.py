"""Build a heterogeneous ("Puzzle") Llama-style GPT model on megatron-core, on CPU, GPU or the meta device.

:func:`build_puzzle_model` turns a :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` into a
megatron-core ``GPTModel`` whose layers follow the config one by one (see :mod:`nemotron_plugins.puzzle.layer_specs`
for the block kinds and the exact state-dict names). Llama semantics: RMSNorm, SwiGLU, RoPE with ``rope_theta``
(and Llama-3 ``rope_scaling`` with all four of its parameters, or ``linear`` scaling), bias-free linears, causal
attention, an untied output layer unless ``tie_word_embeddings``.

The model is megatron's standard ``GPTModel``: ``model(input_ids, position_ids, attention_mask, labels=None)``
returns logits ``[batch, seq, vocab / TP]`` on the last pipeline stage when ``labels`` is ``None`` (vocab-parallel
unless built with ``parallel_output=False``), the per-token loss ``[batch, seq]`` when labels are given, and hidden
states on other stages. ``attention_mask`` may be ``None`` (causal masking is built in) or megatron's boolean mask
(``True`` = masked). Inference with a KV cache goes through megatron's ``inference_context`` argument as usual.

megatron's ``parallel_state`` must be initialised first (:func:`nemotron_plugins.runtime.distributed.
init_distributed`, which also turns on the CPU adapter where CUDA is absent).

Example:
    >>> from nemotron_plugins.puzzle.block_config import AttentionConfig, BlockConfig, FFNConfig, make_config
    >>> from nemotron_plugins.runtime.distributed import distributed_context
    >>> cfg = make_config(hidden_size=64, num_attention_heads=4, vocab_size=128, blocks=[
    ...     BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.swiglu(128)),
    ...     BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.linear())])
    >>> with distributed_context():
    ...     model = build_puzzle_model(cfg)
    ...     count_parameters(model)
    57600
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zlib
from typing import Any

import torch

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig, to_megatron_block_configs
from nemotron_plugins.runtime.config import ParallelConfig

__all__ = [
    "PuzzleModelError",
    "build_puzzle_model",
    "count_parameters",
    "FUSION_FIELDS",
    "fusion_settings",
    "global_parameter_name",
    "init_weights_layout_invariant_",
    "padded_vocab_size",
    "puzzle_transformer_config",
    "single_stage_process_groups",
    "unwrap_model",
]


class PuzzleModelError(ValueError):
    """A config or argument that cannot be built into a model; the message names the field and what is valid."""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise PuzzleModelError(f"params_dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise PuzzleModelError(f"params_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def padded_vocab_size(vocab_size: int, tensor_model_parallel_size: int = 1, divisible_by: int = 128) -> int:
    """``vocab_size`` rounded up to a multiple of ``lcm(divisible_by, TP)``.

    The padding does not grow with TP when ``divisible_by`` is already a multiple of TP, so a model has the same
    vocabulary (and the same loss) at every TP size that divides ``divisible_by``.

    >>> padded_vocab_size(128256, 8), padded_vocab_size(100, 2), padded_vocab_size(100, 2, divisible_by=1)
    (128256, 128, 100)
    """
    if divisible_by < 1 or tensor_model_parallel_size < 1:
        raise PuzzleModelError(
            f"divisible_by ({divisible_by}) and tensor_model_parallel_size ({tensor_model_parallel_size}) must be >= 1"
        )
    multiple = math.lcm(divisible_by, tensor_model_parallel_size)
    return -(-vocab_size // multiple) * multiple


def _current_parallel(parallel: ParallelConfig | None) -> ParallelConfig:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise PuzzleModelError(
            "megatron-core's parallel_state is not initialised; call "
            "nemotron_plugins.runtime.distributed.init_distributed(parallel) before building the model"
        )
    actual = {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "context_parallel_size": parallel_state.get_context_parallel_world_size(),
    }
    if parallel is None:
        return ParallelConfig(**actual)
    for name, value in actual.items():
        if getattr(parallel, name) != value:
            raise PuzzleModelError(
                f"ParallelConfig.{name}={getattr(parallel, name)} but parallel_state was initialised with {value}; "
                "build the model with the config passed to init_distributed()"
            )
    return parallel


def _pipeline_layout(cfg: PuzzleModelConfig, parallel: ParallelConfig) -> list[list[str]] | None:
    pp = parallel.pipeline_model_parallel_size
    layers = cfg.num_hidden_layers
    if parallel.pipeline_layout is None:
        if layers % pp:
            raise PuzzleModelError(
                f"{layers} layers do not split evenly over pipeline_model_parallel_size={pp}; set "
                "ParallelConfig.pipeline_layout to the layer count of each stage (e.g. "
                f"{[layers // pp + (1 if i < layers % pp else 0) for i in range(pp)]})"
            )
        return None
    layout = list(parallel.pipeline_layout)
    if len(layout) != pp or sum(layout) != layers or any(n < 0 for n in layout):
        raise PuzzleModelError(
            f"ParallelConfig.pipeline_layout={layout} must have {pp} non-negative entries summing to {layers} layers"
        )
    stages = []
    for i, n in enumerate(layout):
        stage = (["embedding"] if i == 0 else []) + ["decoder"] * n + (["loss"] if i == pp - 1 else [])
        stages.append(stage)
    return stages


FUSION_FIELDS: dict[str, str] = {
    "bias_activation_fusion": "SwiGLU (and bias) fused by megatron's jit fuser (torch.compile: Triton on CUDA)",
    "bias_dropout_fusion": "bias + dropout + residual add fused by megatron's jit fuser (torch.compile)",
    "cross_entropy_loss_fusion": "megatron's native fused vocab-parallel cross entropy (jit fuser; impl 'native')",
    "apply_rope_fusion": "RoPE fused by Transformer Engine (needs TE)",
    "gradient_accumulation_fusion": "weight-gradient accumulation into main_grad (needs TE or apex's CUDA kernel)",
}
"""The megatron ``TransformerConfig`` fusion switches a run may set (``model.overrides``), with what each needs.
``masked_softmax_fusion`` (apex / TE softmax kernels) and ``persist_layer_norm`` (apex) are not offered: the SDPA
attention has no separate softmax, and apex is not a dependency."""

DEFAULT_CUDA_FUSIONS: tuple[str, ...] = ("bias_activation_fusion", "bias_dropout_fusion")
"""Fusions on by default on CUDA (when torch.compile's Triton backend is importable): they need no library beyond
torch, and the GPU suite checks they keep the bf16 loss and gradients (``tests/gpu/test_model_options_cuda.py``)."""


def _have_triton() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _have_fused_weight_gradient() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
    except (ImportError, ValueError):
        return False


def fusion_settings(device_type: str, overrides: dict[str, Any] | None = None) -> dict[str, bool]:
    """The megatron fusion switches for a model that runs on ``device_type``, with ``overrides`` applied.

    Defaults: :data:`DEFAULT_CUDA_FUSIONS` on for ``"cuda"`` when Triton (torch.compile's CUDA backend) is
    importable; everything off on CPU / meta (megatron's jit fuser would compile C++ kernels there for no gain) and
    for the fusions that need Transformer Engine or apex. An override that asks for a fusion whose library is
    missing is refused rather than left to fail inside megatron.

    Args:
        device_type: ``"cuda"``, ``"cpu"`` or ``"meta"``.
        overrides: Field -> bool for any of :data:`FUSION_FIELDS`.

    Returns:
        Every :data:`FUSION_FIELDS` name -> bool (``cross_entropy_fusion_impl`` stays megatron's ``"native"``).

    Raises:
        PuzzleModelError: An unknown field, a non-bool value, or a fusion whose library (or CUDA) is missing.

    Example:
        >>> fusion_settings("cpu")["bias_activation_fusion"]
        False
    """
    from nemotron_plugins.puzzle.layer_specs import have_transformer_engine

    on_cuda = device_type == "cuda"
    settings = {name: False for name in FUSION_FIELDS}
    if on_cuda and _have_triton():
        settings.update(dict.fromkeys(DEFAULT_CUDA_FUSIONS, True))
    for name, value in (overrides or {}).items():
        if name not in FUSION_FIELDS:
            raise PuzzleModelError(f"unknown fusion {name!r}; valid: {sorted(FUSION_FIELDS)}")
        if not isinstance(value, bool):
            raise PuzzleModelError(f"{name} must be true or false, got {value!r}")
        if value:
            missing = None
            if name == "apply_rope_fusion" and not have_transformer_engine():
                missing = "Transformer Engine"
            elif name == "gradient_accumulation_fusion" and not (
                have_transformer_engine() or _have_fused_weight_gradient()
            ):
                missing = "Transformer Engine or apex's fused_weight_gradient_mlp_cuda"
            elif not on_cuda:
                missing = "CUDA (this model is built for the CPU)"
            if missing is not None:
                raise PuzzleModelError(f"{name}=true needs {missing}, which is not available here")
        settings[name] = value
    return settings


def puzzle_transformer_config(
    cfg: PuzzleModelConfig,
    parallel: ParallelConfig | None = None,
    *,
    params_dtype: torch.dtype | str = torch.float32,
    use_cpu_initialization: bool | None = None,
    perform_initialization: bool = True,
    init_method_std: float = 0.02,
    device_type: str | None = None,
    **overrides: Any,
) -> Any:
    """megatron-core's ``HeterogeneousTransformerConfig`` for ``cfg`` with Llama semantics.

    Per-layer KV heads and FFN widths go through megatron's own ``block_configs`` JSON
    (:func:`~nemotron_plugins.puzzle.block_config.to_megatron_block_configs`); the global ``num_query_groups`` and
    ``ffn_hidden_size`` are those of the first GQA / SwiGLU layer (every layer overrides them).

    Args:
        cfg: The architecture.
        parallel: TP / PP / CP sizes, sequence parallelism and pipeline layout (default: all 1).
        params_dtype: Parameter dtype (``torch.float32`` / ``bfloat16`` / ``float16`` or their names).
        use_cpu_initialization: Initialise full weights on CPU and split them (TP-invariant values); default: on
            when CUDA is absent.
        perform_initialization: Run the weight initialisers (off for meta-device builds and checkpoint loads).
        init_method_std: Std of the normal initialiser (Llama's ``initializer_range``).
        device_type: Where the model runs (``"cuda"``, ``"cpu"``, ``"meta"``); default CUDA when present. Chooses
            the fusions (:func:`fusion_settings`: megatron's torch-only fusions on CUDA, none on CPU).
        **overrides: Any other ``TransformerConfig`` field (e.g. ``recompute_granularity``); fusion fields
            (:data:`FUSION_FIELDS`) go through :func:`fusion_settings`, which refuses one whose library is missing.

    Returns:
        A ``megatron.core.transformer.heterogeneous.heterogeneous_config.HeterogeneousTransformerConfig``.

    Raises:
        PuzzleModelError: For sizes that do not fit the parallel layout (naming the layer) or a bad argument.
    """
    import torch.nn.functional as F
    from megatron.core.transformer.heterogeneous.heterogeneous_config import HeterogeneousTransformerConfig

    from nemotron_plugins.puzzle.layer_specs import LayerSpecError, validate_layers_for_parallel

    parallel = parallel or ParallelConfig()
    dtype = _resolve_dtype(params_dtype)
    tp = parallel.tensor_model_parallel_size
    if parallel.sequence_parallel and tp == 1:
        raise PuzzleModelError("ParallelConfig.sequence_parallel=True needs tensor_model_parallel_size > 1")
    gqa = [b.attention.num_key_value_heads for b in cfg.blocks if b.attention.kind == "gqa"]
    widths = [b.ffn.intermediate_size for b in cfg.blocks if b.ffn.kind == "swiglu"]
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    fusions = fusion_settings(device_type, {k: overrides.pop(k) for k in list(overrides) if k in FUSION_FIELDS})
    values: dict[str, Any] = {
        "num_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "num_attention_heads": cfg.num_attention_heads,
        "kv_channels": cfg.head_dim,
        "num_query_groups": gqa[0] if gqa else cfg.num_attention_heads,
        "ffn_hidden_size": widths[0] if widths else 4 * cfg.hidden_size,
        "normalization": "RMSNorm",
        "layernorm_epsilon": cfg.rms_norm_eps,
        "gated_linear_unit": True,
        "activation_func": F.silu,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "init_method_std": init_method_std,
        **fusions,
        "masked_softmax_fusion": False,
        "persist_layer_norm": False,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": parallel.pipeline_model_parallel_size,
        "context_parallel_size": parallel.context_parallel_size,
        "sequence_parallel": parallel.sequence_parallel,
        "params_dtype": dtype,
        "pipeline_dtype": dtype,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "use_cpu_initialization": use_cpu_initialization,
        "perform_initialization": perform_initialization,
        "heterogeneous_layers_config_encoded_json": json.dumps(to_megatron_block_configs(cfg)),
    }
    layout = _pipeline_layout(cfg, parallel)
    if layout is not None:
        values["pipeline_model_parallel_layout"] = layout
    values.update(overrides)
    try:
        config = HeterogeneousTransformerConfig(**values)
    except (AssertionError, ValueError) as err:
        raise PuzzleModelError(f"megatron-core rejected the transformer config: {err}") from err
    try:
        validate_layers_for_parallel(config)
    except LayerSpecError as err:
        raise PuzzleModelError(str(err)) from err
    return config


def _rope_arguments(cfg: PuzzleModelConfig) -> tuple[dict[str, Any], dict[str, float] | None]:
    """GPTModel RoPE kwargs, plus the llama3 scaling parameters to apply exactly (or ``None``)."""
    kwargs: dict[str, Any] = {"position_embedding_type": "rope", "rotary_base": cfg.rope_theta}
    scaling = cfg.rope_scaling
    if not scaling:
        return kwargs, None
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type in (None, "default"):
        return kwargs, None
    if rope_type == "llama3":
        try:
            params = {
                "factor": float(scaling["factor"]),
                "low_freq_factor": float(scaling.get("low_freq_factor", 1.0)),
                "high_freq_factor": float(scaling.get("high_freq_factor", 4.0)),
                "original_max_position_embeddings": int(scaling.get("original_max_position_embeddings", 8192)),
            }
        except (KeyError, TypeError, ValueError) as err:
            raise PuzzleModelError(f"rope_scaling: invalid llama3 parameters {dict(scaling)!r} ({err})") from None
        kwargs.update(rope_scaling=True, rope_scaling_factor=params["factor"])
        return kwargs, params
    if rope_type == "linear":
        kwargs["seq_len_interpolation_factor"] = float(scaling["factor"])
        return kwargs, None
    raise PuzzleModelError(
        f"rope_scaling.rope_type={rope_type!r} is not supported; valid: 'llama3', 'linear', 'default' or no scaling"
    )


def build_puzzle_model(
    cfg: PuzzleModelConfig,
    *,
    parallel: ParallelConfig | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    device: str | torch.device | None = None,
    params_dtype: torch.dtype | str = torch.float32,
    seq_length: int | None = None,
    use_transformer_engine: bool | None = None,
    layer_spec: str | None = None,
    vp_stage: int | None = None,
    parallel_output: bool = True,
    make_vocab_size_divisible_by: int = 128,
    init_method_std: float = 0.02,
    perform_initialization: bool = True,
    pg_collection: Any = None,
    **config_overrides: Any,
) -> Any:
    """Build the megatron-core ``GPTModel`` of ``cfg`` for this process's pipeline stage.

    Args:
        cfg: The architecture.
        parallel: Must match the sizes ``init_distributed`` used; default: read them from ``parallel_state``
            (sequence parallelism and pipeline layout then default to off / even).
        pre_process: Whether this chunk holds the embedding; default: first pipeline stage.
        post_process: Whether this chunk holds the final norm and output layer; default: last pipeline stage.
        device: ``"meta"`` builds without allocating (full-size configs, parameter counts; no initialisation);
            ``"cpu"`` / ``"cuda"``; default: CUDA when present, else CPU.
        params_dtype: Parameter dtype.
        seq_length: Longest training sequence (megatron's ``max_sequence_length``); default
            ``cfg.max_position_embeddings``.
        use_transformer_engine: Shorthand kept for older callers: ``True`` selects ``"puzzle_te"`` (raises without
            TE), ``False`` the default non-TE spec ``"puzzle_sdpa"``. Give at most one of this and ``layer_spec``.
        layer_spec: Name of a :data:`nemotron_plugins.registry.LAYER_SPECS` entry, called as
            ``spec(config, vp_stage=...)`` and returning megatron ``TransformerBlockSubmodules`` (builtin:
            ``"puzzle_te"``, ``"puzzle_sdpa"``, ``"puzzle_local"``; a registered third-party spec works the same);
            default ``"puzzle_te"`` when TE is importable and CUDA present, else ``"puzzle_sdpa"``.
        vp_stage: Virtual pipeline stage (``None`` without virtual pipelining).
        parallel_output: Keep logits split over TP ranks (megatron's default; the vocab-parallel loss needs it).
        make_vocab_size_divisible_by: Pad the vocabulary to a multiple of ``lcm(this, TP)``
            (:func:`padded_vocab_size`); 1 pads only as much as TP needs.
        init_method_std: Std of the normal initialiser.
        perform_initialization: Initialise weights (ignored on ``meta``).
        pg_collection: megatron-core's ``ProcessGroupCollection`` to build a model at a layout of its own instead of
            ``parallel_state``'s (e.g. a generation copy at TP1 inside a TP2 x PP2 training run;
            :func:`single_stage_process_groups`). The model is then one whole pipeline stage (``parallel`` must
            give its TP size, PP 1 and CP 1) with the non-TE layer spec (megatron's TE linear replacements and the
            TE spec do not take a TP group); its TP group is ``pg_collection.tp``.
        **config_overrides: Extra ``TransformerConfig`` fields for :func:`puzzle_transformer_config`.

    Returns:
        ``megatron.core.models.gpt.GPTModel``; its ``config`` is the heterogeneous transformer config.

    Raises:
        PuzzleModelError: For a config that does not fit (naming the layer / field), or parallel_state not set up.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    from nemotron_plugins.puzzle.layer_specs import have_transformer_engine

    if pg_collection is None:
        parallel = _current_parallel(parallel)
    else:
        parallel = _own_layout(parallel, pg_collection, layer_spec, use_transformer_engine, vp_stage)
        layer_spec = layer_spec or "puzzle_sdpa"
        pre_process = True if pre_process is None else pre_process
        post_process = True if post_process is None else post_process
    target = torch.device(device) if device is not None else None
    on_meta = target is not None and target.type == "meta"
    if target is not None and target.type not in ("meta", "cpu", "cuda"):
        raise PuzzleModelError(f"device must be 'meta', 'cpu' or 'cuda', got {device!r}")
    if target is not None and target.type == "cuda" and not torch.cuda.is_available():
        raise PuzzleModelError("device='cuda' but CUDA is not available; use 'cpu' or 'meta'")
    layer_spec = _layer_spec_name(layer_spec, use_transformer_engine, on_meta, have_transformer_engine())
    use_cpu_init = on_meta or (target is not None and target.type == "cpu") or not torch.cuda.is_available()
    if target is not None:
        device_type = target.type
    else:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    config = puzzle_transformer_config(
        cfg,
        parallel,
        params_dtype=params_dtype,
        device_type=device_type,
        use_cpu_initialization=use_cpu_init,
        perform_initialization=perform_initialization and not on_meta,
        init_method_std=init_method_std,
        **config_overrides,
    )
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    block_spec = _resolve_layer_spec(layer_spec)(config, vp_stage=vp_stage)
    if pg_collection is not None:
        block_spec = _spec_with_tp_group(block_spec, pg_collection.tp)
    rope_kwargs, llama3 = _rope_arguments(cfg)
    vocab = padded_vocab_size(cfg.vocab_size, parallel.tensor_model_parallel_size, make_vocab_size_divisible_by)
    build_context = torch.device("meta") if on_meta else contextlib.nullcontext()
    with build_context:
        model = GPTModel(
            config=config,
            transformer_layer_spec=block_spec,
            vocab_size=vocab,
            max_sequence_length=seq_length or cfg.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=parallel_output,
            share_embeddings_and_output_weights=cfg.tie_word_embeddings,
            vp_stage=vp_stage,
            **({"pg_collection": pg_collection} if pg_collection is not None else {}),
            **rope_kwargs,
        )
    if llama3 is not None and hasattr(model, "rotary_pos_emb"):
        _apply_llama3_scaling(model.rotary_pos_emb, cfg, llama3)
    if not config.perform_initialization:
        mark_tensor_parallel_weights_(model)
    if (target is not None and target.type == "cuda") or (target is None and torch.cuda.is_available()):
        model = model.cuda()  # megatron's own layers may already be there; our norms and rotary buffers are not
    return model


def single_stage_process_groups(tp_size: int) -> tuple[Any, int, int]:
    """megatron-core process groups for a model of its own layout: whole (one pipeline stage, no CP), tensor-parallel
    over ``tp_size`` consecutive ranks (rank ``r`` is TP rank ``r % tp_size`` of replica ``r // tp_size``).

    A collective: every rank of the world calls it (it creates every replica's TP group and every rank's one-rank
    group, in the same order everywhere).

    Args:
        tp_size: Tensor parallelism of the model; must divide the world size.

    Returns:
        ``(pg_collection, tp_rank, replica)`` for :func:`build_puzzle_model`'s ``pg_collection``.

    Raises:
        PuzzleModelError: ``tp_size`` does not divide the world size, or no process group is initialised.
    """
    from megatron.core.process_groups_config import ProcessGroupCollection

    if not torch.distributed.is_initialized():
        raise PuzzleModelError("single_stage_process_groups needs torch.distributed to be initialised")
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if tp_size < 1 or world % tp_size:
        raise PuzzleModelError(f"tensor parallel size {tp_size} does not divide the world size {world}")
    tp_group = one = None
    for replica in range(world // tp_size):
        group = torch.distributed.new_group(list(range(replica * tp_size, (replica + 1) * tp_size)))
        if replica == rank // tp_size:
            tp_group = group
    for r in range(world):
        group = torch.distributed.new_group([r])
        if r == rank:
            one = group
    groups = ProcessGroupCollection()
    groups.tp = groups.tp_cp = groups.mp = tp_group
    groups.pp = groups.cp = groups.embd = groups.pos_embd = groups.dp = groups.dp_cp = one
    return groups, rank % tp_size, rank // tp_size


def _own_layout(
    parallel: ParallelConfig | None, pg_collection: Any, layer_spec: str | None, use_te: bool | None, vp_stage: Any
) -> ParallelConfig:
    """Check the arguments of a model built at its own layout (``pg_collection``); return its ParallelConfig."""
    parallel = parallel or ParallelConfig()
    tp = torch.distributed.get_world_size(pg_collection.tp) if torch.distributed.is_initialized() else 1
    if parallel.tensor_model_parallel_size != tp:
        raise PuzzleModelError(
            f"ParallelConfig.tensor_model_parallel_size={parallel.tensor_model_parallel_size} but pg_collection.tp "
            f"has {tp} ranks"
        )
    if parallel.pipeline_model_parallel_size != 1 or parallel.context_parallel_size != 1 or vp_stage is not None:
        raise PuzzleModelError(
            "a model built with pg_collection is one whole pipeline stage: ParallelConfig.pipeline_model_parallel_size "
            "and context_parallel_size must be 1 (and no vp_stage)"
        )
    if parallel.sequence_parallel:
        raise PuzzleModelError("a model built with pg_collection does not support ParallelConfig.sequence_parallel")
    if use_te or layer_spec not in (None, "puzzle_sdpa", "puzzle_local"):
        raise PuzzleModelError(
            f"a model built with pg_collection uses the 'puzzle_sdpa' or 'puzzle_local' layer spec, got "
            f"layer_spec={layer_spec!r} / use_transformer_engine={use_te!r} (megatron's TE linear replacements do not "
            "take a TP group)"
        )
    return parallel


def _spec_with_tp_group(block: Any, tp_group: Any) -> Any:
    """The block spec with every module megatron builds without a TP group given ``tp_group``: the linear
    replacements of attention and FFN (megatron's ``ColumnParallelLinearGathered`` takes none) and MLP subclasses
    (megatron passes ``tp_group`` to its own ``MLP`` class only)."""
    import dataclasses

    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.spec_utils import ModuleSpec

    replacement = _group_linear_replacement()

    def fix(spec: Any, *, mlp: bool) -> Any:
        if not isinstance(spec, ModuleSpec) or not isinstance(spec.module, type):
            return spec
        from megatron.core.transformer.heterogeneous.linear_replacements import ColumnParallelLinearGathered

        if issubclass(spec.module, ColumnParallelLinearGathered):
            return dataclasses.replace(spec, module=replacement, params={**(spec.params or {}), "tp_group": tp_group})
        if mlp and issubclass(spec.module, MLP) and spec.module is not MLP:
            return dataclasses.replace(spec, params={**(spec.params or {}), "tp_group": tp_group})
        return spec

    layers = []
    for spec in block.layer_specs:
        sub = dataclasses.replace(
            spec.submodules,
            self_attention=fix(spec.submodules.self_attention, mlp=False),
            mlp=fix(spec.submodules.mlp, mlp=True),
        )
        layers.append(dataclasses.replace(spec, submodules=sub))
    return dataclasses.replace(block, layer_specs=layers)


def _group_linear_replacement() -> type:
    """A linear attention / FFN replacement (``[H/t, H]`` column-parallel, output all-gathered over ``tp_group``)
    with the parameters and state-dict names of megatron's ``ColumnParallelLinearGathered``."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    class GroupLinearReplacement(ColumnParallelLinear):
        def __init__(self, config: Any, *args: Any, tp_group: Any = None, **kwargs: Any) -> None:
            super().__init__(
                input_size=config.hidden_size,
                output_size=config.hidden_size,
                config=config,
                init_method=config.init_method,
                gather_output=False,
                bias=config.add_bias_linear,
                skip_bias_add=False,
                is_expert=False,
                tp_group=tp_group,
            )

        def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None, **kwargs: Any) -> Any:
            out, bias = super().forward(input_, weight)
            if self.tp_group.size() > 1:
                out = gather_from_tensor_model_parallel_region(out, group=self.tp_group)
            return out, bias

    return GroupLinearReplacement


def _layer_spec_name(name: str | None, use_te: bool | None, on_meta: bool, have_te: bool) -> str:
    """The ``LAYER_SPECS`` name to build with (see :func:`build_puzzle_model`'s ``layer_spec``)."""
    if name is not None:
        if use_te is not None:
            raise PuzzleModelError(
                f"give layer_spec={name!r} or use_transformer_engine={use_te!r}, not both (layer_spec names the "
                "implementation)"
            )
        return name
    if use_te is not None:
        return "puzzle_te" if use_te else "puzzle_sdpa"
    return "puzzle_te" if have_te and torch.cuda.is_available() and not on_meta else "puzzle_sdpa"


def _resolve_layer_spec(name: str) -> Any:
    """The registered layer-spec function ``name``, with an error naming the valid ones."""
    from nemotron_plugins.registry import LAYER_SPECS, PluginError

    try:
        return LAYER_SPECS.get(name)
    except PluginError as err:
        raise PuzzleModelError(f"layer_spec={name!r}: {err}") from err


def mark_tensor_parallel_weights_(model: Any) -> int:
    """Set megatron's tensor-parallel attributes (``tensor_model_parallel``, ``partition_dim``, ``partition_stride``)
    on the weights of vocab-parallel embeddings and column / row parallel linears where they are missing.

    megatron-core sets them only inside its weight initialisers, so a model built with
    ``perform_initialization=False`` (to load a checkpoint) would otherwise count TP-sharded weights as replicated
    (wrong gradient norms and clipping) and be initialised unsharded by :func:`init_weights_layout_invariant_`.

    Returns:
        The number of weights marked.
    """
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        set_tensor_model_parallel_attributes,
    )

    marked = 0
    for module in unwrap_model(model).modules():
        if isinstance(module, (VocabParallelEmbedding, ColumnParallelLinear)):
            dim = 0
        elif isinstance(module, RowParallelLinear):
            dim = 1
        else:
            continue
        weight = getattr(module, "weight", None)
        if weight is None or hasattr(weight, "tensor_model_parallel"):
            continue
        set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=dim, stride=1)
        marked += 1
    return marked


def _apply_llama3_scaling(rotary: Any, cfg: PuzzleModelConfig, params: dict[str, float]) -> None:
    """Recompute RoPE inverse frequencies with every llama3 parameter (megatron passes only ``factor``)."""
    inv_freq = rotary.inv_freq
    dim = inv_freq.numel() * 2
    device = inv_freq.device if inv_freq.device.type != "meta" else torch.device("cpu")
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    scaled = rotary._apply_scaling(base, **params)
    rotary.inv_freq = scaled.to(device=inv_freq.device) if inv_freq.device.type != "meta" else scaled


def unwrap_model(model: Any) -> Any:
    """Strip DDP / Float16 wrappers (``.module`` chains) to reach the ``GPTModel``."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def count_parameters(model: Any) -> int:
    """Parameters of ``model`` (this rank's shards), shared tensors counted once; works on meta-device models."""
    seen: set[int] = set()
    total = 0
    for param in unwrap_model(model).parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


_LOCAL_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def global_parameter_name(model: Any, name: str) -> str:
    """Map a parameter name with a stage-local layer index (``decoder.layers.N.``) to the global layer index."""
    inner = unwrap_model(model)
    match = _LOCAL_LAYER.match(name)
    if match is None:
        return name
    layer = inner.decoder.layers[int(match.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}.{name[match.end() :]}"


def init_weights_layout_invariant_(model: Any, *, seed: int, std: float | None = None) -> None:
    """Initialise ``model`` so that every full (unsharded) tensor is the same at any TP / PP layout.

    Each tensor is drawn in full from a generator seeded by ``seed`` and its global name, then this rank's TP shard
    is taken (QKV rows by query group, SwiGLU ``fc1`` as ``[gate shard; up shard]``). Norm weights become 1; the
    output projections of attention and FFN use ``std / sqrt(2 * num_layers)`` as megatron does. Meant for small
    models (tests, tiny recipes, parallel-equivalence checks): every rank materialises each full tensor once.

    Args:
        model: A ``GPTModel`` built by :func:`build_puzzle_model` (DDP-wrapped is fine), not on ``meta``.
        seed: Base seed.
        std: Normal std; default ``model.config.init_method_std``.
    """
    from megatron.core import parallel_state

    inner = unwrap_model(model)
    config = inner.config
    std = config.init_method_std if std is None else std
    out_std = std / math.sqrt(2.0 * config.num_layers)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, param in inner.named_parameters():
            if param.device.type == "meta":
                raise PuzzleModelError(f"cannot initialise {name}: the model is on the meta device")
            key = global_parameter_name(inner, name)
            if key == "output_layer.weight" and inner.share_embeddings_and_output_weights:
                key = "embedding.word_embeddings.weight"
            if param.dim() == 1:
                param.fill_(1.0)
                continue
            sharded = bool(getattr(param, "tensor_model_parallel", False)) and tp > 1
            dim = int(getattr(param, "partition_dim", 0)) if sharded else 0
            full_shape = list(param.shape)
            if sharded:
                full_shape[dim] *= tp
            generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
            scale = out_std if key.endswith(("linear_proj.weight", "linear_fc2.weight")) else std
            full = torch.randn(full_shape, generator=generator, dtype=torch.float32) * scale
            if sharded:
                if key.endswith("mlp.linear_fc1.weight") and config.gated_linear_unit:
                    gate, up = full.chunk(2, dim=0)
                    full = torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
                else:
                    full = full.chunk(tp, dim=dim)[tp_rank]
            param.copy_(full.to(dtype=param.dtype, device=param.device))
