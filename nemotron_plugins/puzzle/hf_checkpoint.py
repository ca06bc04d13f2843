"""Hugging Face DeciLM safetensors checkpoints in and out of the Megatron Puzzle model, at any TP / PP.

HF side (``DeciLMForCausalLM`` / ``nemotron-nas``; a plain ``LlamaForCausalLM`` checkpoint is the all-standard case)::

    model.embed_tokens.weight                                   [vocab, hidden]
    model.layers.N.input_layernorm.weight                       [hidden]          attention not no_op
    model.layers.N.self_attn.{q,k,v,o}_proj.weight              GQA, per-layer KV heads
    model.layers.N.self_attn.linear_attn.weight                 [hidden, hidden]  linear replacement
    model.layers.N.post_attention_layernorm.weight              [hidden]          FFN not no_op
    model.layers.N.mlp.{gate,up,down}_proj.weight               SwiGLU, per-layer width
    model.layers.N.mlp.linear_mlp.weight                        [hidden, hidden]  linear replacement
    model.norm.weight, lm_head.weight                           (no lm_head when embeddings are tied)

A no-op sub-block has neither weights nor its norm (the DeciLM modeling code creates ``input_layernorm`` only when
the attention is not a no-op, ``post_attention_layernorm`` only when the FFN is not, linear replacements included).

Megatron side (megatron-core GPT naming; layer indices are local to the model chunk, ``layer_number - 1`` of each
``TransformerLayer`` gives the global index, so PP and virtual PP need no extra bookkeeping)::

    embedding.word_embeddings.weight          vocab-parallel rows (vocab padded to the model's size)
    decoder.layers.i.input_layernorm.weight   (or TE's fused ``...linear_qkv.layer_norm_weight``, see below)
    decoder.layers.i.self_attention.linear_qkv.weight   column-parallel; per query group: its q heads, then k, then v
    decoder.layers.i.self_attention.linear_proj.weight  row-parallel
    decoder.layers.i.self_attention.weight              linear replacement: column-parallel (output gathered)
    decoder.layers.i.pre_mlp_layernorm.weight
    decoder.layers.i.mlp.linear_fc1.weight    column-parallel, each TP shard = [gate shard; up shard]
    decoder.layers.i.mlp.linear_fc2.weight    row-parallel
    decoder.layers.i.mlp.weight               linear replacement: column-parallel
    decoder.final_layernorm.weight, output_layer.weight (column-parallel rows, padded vocab)

Where a model uses Transformer Engine's fused norm+linear modules, the norms live at
``self_attention.linear_qkv.layer_norm_weight`` / ``self_attention.layer_norm_weight`` /
``mlp.linear_fc1.layer_norm_weight`` / ``mlp.layer_norm_weight``; loading looks each norm up under every known
spelling and uses the one the model has (:data:`LAYER_SLOT_NAMES`).

The mapping is a list of :class:`TensorPlan` entries (one per Megatron tensor) and two pure functions,
:func:`hf_to_megatron_tensor` and :func:`megatron_to_hf_tensors`, that convert one entry for one TP rank without
any distributed setup.

Loading: :func:`load_hf_checkpoint` streams an HF checkpoint into a model, one tensor group in memory at a time.
Each rank reads only what it holds: a pipeline stage only its layers' tensors, a TP rank only its rows / columns
of each sharded tensor (``safe_open(...).get_slice``; for fused q/k/v the row range of its query groups in each of
q, k and v, for fc1 its rows of gate and of up, for the vocabulary its rows), so a TP rank reads about ``1/TP`` of
the file (:attr:`LoadReport.bytes_read`). Configs using what the model does not implement (``window_length``) are
rejected before anything is read.

Export: :func:`export_hf_checkpoint` (a model at any TP / PP), :func:`export_hf_state_dict` (a whole model in one
process) and :func:`reexport_hf_checkpoint` (an HF directory) write sharded safetensors
(``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``, or a single ``model.safetensors``),
``config.json`` as :func:`hf_export_layout` decides (plain ``LlamaForCausalLM`` when every block is standard, else
``nemotron-nas`` with ``block_configs``, SwiGLU widths that are not multiples of 256 zero-padded so DeciLM readers
can express them), the tokenizer files and ``generation_config.json``. HF -> Megatron -> HF is bitwise exact
whenever no padding is needed (padded tensors are the source plus zero rows / columns).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from nemotron_plugins.puzzle.block_config import (
    BlockConfig,
    PuzzleModelConfig,
    load_hf_config,
    reject_unimplemented,
)
from nemotron_plugins.puzzle.model import unwrap_model

logger = logging.getLogger(__name__)

__all__ = [
    "HFCheckpointError",
    "LAYER_SLOT_NAMES",
    "LoadReport",
    "ParallelRanks",
    "TensorPlan",
    "HFExportLayout",
    "TOKENIZER_FILES",
    "copy_tokenizer_files",
    "expected_hf_tensors",
    "export_hf_checkpoint",
    "export_hf_state_dict",
    "hf_export_layout",
    "fc1_from_megatron",
    "fc1_to_megatron",
    "hf_to_megatron_tensor",
    "load_hf_checkpoint",
    "load_hf_tensors",
    "megatron_to_hf_tensors",
    "pad_ffn_for_export",
    "parse_shard_size",
    "plan_megatron_tensors",
    "qkv_from_megatron",
    "qkv_to_megatron",
    "read_hf_state_dict",
    "reexport_hf_checkpoint",
    "save_hf_weights",
    "shard_tensor",
]

TensorKind = Literal["replicated", "column", "row", "vocab", "qkv", "fc1"]

SAFE_INDEX_NAME = "model.safetensors.index.json"
SAFE_SINGLE_NAME = "model.safetensors"

# Per-layer Megatron tensor names (relative to ``decoder.layers.<i>.``), first spelling = megatron-core's local
# (non-TE) heterogeneous spec, then Transformer Engine's fused-norm spellings.
LAYER_SLOT_NAMES: dict[str, tuple[str, ...]] = {
    "attn_norm": (
        "input_layernorm.weight",
        "self_attention.linear_qkv.layer_norm_weight",
        "self_attention.layer_norm_weight",
    ),
    "qkv": ("self_attention.linear_qkv.weight",),
    "proj": ("self_attention.linear_proj.weight",),
    "linear_attn": ("self_attention.weight",),
    "ffn_norm": (
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.layer_norm_weight",
        "mlp.layer_norm_weight",
    ),
    "fc1": ("mlp.linear_fc1.weight",),
    "fc2": ("mlp.linear_fc2.weight",),
    "linear_mlp": ("mlp.weight",),
}
EMBEDDING_NAME = "embedding.word_embeddings.weight"
FINAL_NORM_NAME = "decoder.final_layernorm.weight"
OUTPUT_NAME = "output_layer.weight"

# HF tensors that are not weights of the architecture (old checkpoints store RoPE inverse frequencies).
_IGNORED_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class HFCheckpointError(RuntimeError):
    """A checkpoint does not match the config or the model; the message names the tensor and layer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorPlan:
    """How one Megatron tensor relates to HF tensors."""

    megatron_name: str
    """State-dict name in the Megatron model chunk (layer index local to the chunk)."""
    hf_names: tuple[str, ...]
    """HF tensors it is built from (q, k, v for ``qkv``; gate, up for ``fc1``; one name otherwise)."""
    kind: TensorKind
    """How it is split over tensor-parallel ranks: ``replicated`` (norms), ``column`` (rows split), ``row`` (columns
    split), ``vocab`` (rows split after padding the vocabulary), ``qkv`` (query groups split), ``fc1`` (gate and up
    each split, concatenated per rank)."""
    layer: int | None = None
    """Global layer index (``None`` for embedding, final norm and output layer)."""
    export: bool = True
    """Whether export writes its HF tensors (False for a tied output layer's copy of the embedding)."""
    num_kv_heads: int | None = None
    """KV heads of this layer (``qkv`` only)."""

    def where(self) -> str:
        """Human-readable location for error messages."""
        return f"layer {self.layer}" if self.layer is not None else "model"


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelRanks:
    """This process's place in the parallel layout (``None`` groups: no collective of that kind is needed)."""

    tp_rank: int = 0
    """Tensor-parallel rank."""
    tp_size: int = 1
    """Tensor-parallel size."""
    dp_rank: int = 0
    """Data-parallel rank (with context parallel folded in); only replica 0 takes part in export."""
    tp_group: Any = None
    """Tensor-parallel process group (needed by export when ``tp_size > 1``)."""

    @classmethod
    def from_megatron(cls) -> ParallelRanks:
        """Read the ranks from megatron-core's ``parallel_state`` (single process when it is not initialised)."""
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            return cls()
        return cls(
            tp_rank=ps.get_tensor_model_parallel_rank(),
            tp_size=ps.get_tensor_model_parallel_world_size(),
            dp_rank=ps.get_data_parallel_rank(with_context_parallel=True),
            tp_group=ps.get_tensor_model_parallel_group(),
        )


# --------------------------------------------------------------------------------------------------------------------
# HF names and shapes
# --------------------------------------------------------------------------------------------------------------------


def _hf_layer_tensors(cfg: PuzzleModelConfig, i: int) -> list[tuple[str, tuple[int, ...]]]:
    block = cfg.blocks[i]
    h, hd, heads = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
    p = f"model.layers.{i}."
    out: list[tuple[str, tuple[int, ...]]] = []
    attn = block.attention
    if attn.kind != "no_op":
        out.append((p + "input_layernorm.weight", (h,)))
    if attn.kind == "gqa":
        kv = attn.num_key_value_heads
        out += [
            (p + "self_attn.q_proj.weight", (heads * hd, h)),
            (p + "self_attn.k_proj.weight", (kv * hd, h)),
            (p + "self_attn.v_proj.weight", (kv * hd, h)),
            (p + "self_attn.o_proj.weight", (h, heads * hd)),
        ]
    elif attn.kind == "linear":
        out.append((p + "self_attn.linear_attn.weight", (h, h)))
    ffn = block.ffn
    if ffn.kind != "no_op":
        out.append((p + "post_attention_layernorm.weight", (h,)))
    if ffn.kind == "swiglu":
        w = ffn.intermediate_size
        out += [
            (p + "mlp.gate_proj.weight", (w, h)),
            (p + "mlp.up_proj.weight", (w, h)),
            (p + "mlp.down_proj.weight", (h, w)),
        ]
    elif ffn.kind == "linear":
        out.append((p + "mlp.linear_mlp.weight", (h, h)))
    return out


def expected_hf_tensors(cfg: PuzzleModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of ``cfg`` with its shape, in canonical (file) order.

    Args:
        cfg: The architecture.

    Returns:
        ``{name: shape}``: embedding, each layer's tensors, final norm, then ``lm_head`` unless embeddings are tied.
    """
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size)}
    for i in range(cfg.num_hidden_layers):
        out.update(_hf_layer_tensors(cfg, i))
    out["model.norm.weight"] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return out


# --------------------------------------------------------------------------------------------------------------------
# The plan: one entry per Megatron tensor
# --------------------------------------------------------------------------------------------------------------------


def _resolve(slot: str, prefix: str, model_keys: set[str] | None) -> str:
    candidates = LAYER_SLOT_NAMES[slot]
    if model_keys is None:
        return prefix + candidates[0]
    for suffix in candidates:
        if prefix + suffix in model_keys:
            return prefix + suffix
    return prefix + candidates[0]  # reported as missing from the model later


def _layer_plans(block: BlockConfig, layer: int, local: int, model_keys: set[str] | None) -> list[TensorPlan]:
    prefix = f"decoder.layers.{local}."
    hf = f"model.layers.{layer}."
    plans: list[TensorPlan] = []

    def add(slot: str, hf_names: Sequence[str], kind: TensorKind, **kw: Any) -> None:
        name = _resolve(slot, prefix, model_keys)
        plans.append(TensorPlan(megatron_name=name, hf_names=tuple(hf_names), kind=kind, layer=layer, **kw))

    attn = block.attention
    if attn.kind != "no_op":
        add("attn_norm", [hf + "input_layernorm.weight"], "replicated")
    if attn.kind == "gqa":
        add(
            "qkv",
            [hf + f"self_attn.{x}_proj.weight" for x in "qkv"],
            "qkv",
            num_kv_heads=attn.num_key_value_heads,
        )
        add("proj", [hf + "self_attn.o_proj.weight"], "row")
    elif attn.kind == "linear":
        add("linear_attn", [hf + "self_attn.linear_attn.weight"], "column")
    ffn = block.ffn
    if ffn.kind != "no_op":
        add("ffn_norm", [hf + "post_attention_layernorm.weight"], "replicated")
    if ffn.kind == "swiglu":
        add("fc1", [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"], "fc1")
        add("fc2", [hf + "mlp.down_proj.weight"], "row")
    elif ffn.kind == "linear":
        add("linear_mlp", [hf + "mlp.linear_mlp.weight"], "column")
    return plans


def plan_megatron_tensors(
    cfg: PuzzleModelConfig,
    *,
    layers: Sequence[int] | None = None,
    has_embedding: bool = True,
    has_final_norm: bool = True,
    has_output_layer: bool | None = None,
    model_keys: set[str] | None = None,
) -> list[TensorPlan]:
    """List the Megatron tensors of one model chunk and the HF tensors each is made from.

    Args:
        cfg: The architecture.
        layers: Global indices of the layers in this chunk, in local order (default: all layers, i.e. no PP).
        has_embedding: The chunk holds the word embedding (first pipeline stage).
        has_final_norm: The chunk holds the final norm (last stage).
        has_output_layer: The chunk holds an ``output_layer.weight`` (last stage; with tied embeddings only when
            it is a separate copy, i.e. PP > 1). Default: last stage and not tied.
        model_keys: The chunk's state-dict keys, to pick among alternative norm spellings (TE fused norms).

    Returns:
        One :class:`TensorPlan` per Megatron tensor, in the chunk's order (embedding, layers, final norm, output).
    """
    if layers is None:
        layers = range(cfg.num_hidden_layers)
    if has_output_layer is None:
        has_output_layer = has_final_norm and not cfg.tie_word_embeddings
    plans: list[TensorPlan] = []
    if has_embedding:
        plans.append(TensorPlan(megatron_name=EMBEDDING_NAME, hf_names=("model.embed_tokens.weight",), kind="vocab"))
    for local, layer in enumerate(layers):
        if not 0 <= layer < cfg.num_hidden_layers:
            raise HFCheckpointError(
                f"model chunk holds global layer {layer}, but the config has {cfg.num_hidden_layers} layers"
            )
        plans += _layer_plans(cfg.blocks[layer], layer, local, model_keys)
    if has_final_norm:
        plans.append(TensorPlan(megatron_name=FINAL_NORM_NAME, hf_names=("model.norm.weight",), kind="replicated"))
    if has_output_layer:
        if cfg.tie_word_embeddings:
            plans.append(
                TensorPlan(
                    megatron_name=OUTPUT_NAME, hf_names=("model.embed_tokens.weight",), kind="vocab", export=False
                )
            )
        else:
            plans.append(TensorPlan(megatron_name=OUTPUT_NAME, hf_names=("lm_head.weight",), kind="vocab"))
    return plans


# --------------------------------------------------------------------------------------------------------------------
# Pure tensor conversions
# --------------------------------------------------------------------------------------------------------------------


def shard_tensor(tensor: torch.Tensor, dim: int, tp_rank: int, tp_size: int, *, name: str = "tensor") -> torch.Tensor:
    """This TP rank's contiguous slice of ``tensor`` along ``dim``.

    Raises:
        HFCheckpointError: ``tensor.shape[dim]`` is not divisible by ``tp_size``.
    """
    size = tensor.shape[dim]
    if size % tp_size:
        raise HFCheckpointError(f"{name}: dimension {dim} of size {size} is not divisible by TP={tp_size}")
    part = size // tp_size
    return tensor.narrow(dim, tp_rank * part, part)


def qkv_to_megatron(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> torch.Tensor:
    """Fuse HF ``q_proj`` / ``k_proj`` / ``v_proj`` into this TP rank's Megatron ``linear_qkv`` weight.

    Megatron's layout groups rows by query group: for each KV head g, the ``num_heads // num_kv_heads`` query heads
    that attend to it, then k head g, then v head g. TP rank r holds query groups ``r * G/tp ... (r+1) * G/tp - 1``.

    Raises:
        HFCheckpointError: shapes do not match the head counts, or the KV heads are not divisible by TP.
    """
    if num_kv_heads % tp_size:
        raise HFCheckpointError(f"{num_kv_heads} KV heads cannot be split over TP={tp_size} (need a multiple)")
    hidden = q.shape[1]
    for name, t, heads in (("q_proj", q, num_heads), ("k_proj", k, num_kv_heads), ("v_proj", v, num_kv_heads)):
        if tuple(t.shape) != (heads * head_dim, hidden):
            raise HFCheckpointError(f"{name}: expected shape {(heads * head_dim, hidden)}, got {tuple(t.shape)}")
    per_group = num_heads // num_kv_heads
    groups_per_rank = num_kv_heads // tp_size
    g0 = tp_rank * groups_per_rank
    qg = q.reshape(num_kv_heads, per_group * head_dim, hidden)[g0 : g0 + groups_per_rank]
    kg = k.reshape(num_kv_heads, head_dim, hidden)[g0 : g0 + groups_per_rank]
    vg = v.reshape(num_kv_heads, head_dim, hidden)[g0 : g0 + groups_per_rank]
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, hidden).contiguous()


def qkv_from_megatron(
    shards: Sequence[torch.Tensor], *, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split Megatron ``linear_qkv`` TP shards (in TP-rank order) back into HF ``q``, ``k``, ``v`` weights."""
    full = torch.cat(list(shards), dim=0)
    per_group = num_heads // num_kv_heads
    rows = (per_group + 2) * head_dim
    if full.shape[0] != num_kv_heads * rows:
        raise HFCheckpointError(
            f"linear_qkv: expected {num_kv_heads * rows} rows for {num_heads} heads / {num_kv_heads} KV heads "
            f"of dim {head_dim}, got {full.shape[0]}"
        )
    grouped = full.reshape(num_kv_heads, rows, -1)
    q = grouped[:, : per_group * head_dim].reshape(num_heads * head_dim, -1)
    k = grouped[:, per_group * head_dim : (per_group + 1) * head_dim].reshape(num_kv_heads * head_dim, -1)
    v = grouped[:, (per_group + 1) * head_dim :].reshape(num_kv_heads * head_dim, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def fc1_to_megatron(gate: torch.Tensor, up: torch.Tensor, *, tp_rank: int = 0, tp_size: int = 1) -> torch.Tensor:
    """This TP rank's Megatron ``linear_fc1`` weight: ``[gate shard; up shard]`` (SwiGLU chunks it in halves)."""
    if gate.shape != up.shape:
        raise HFCheckpointError(f"gate_proj {tuple(gate.shape)} and up_proj {tuple(up.shape)} differ in shape")
    return torch.cat(
        [
            shard_tensor(gate, 0, tp_rank, tp_size, name="gate_proj"),
            shard_tensor(up, 0, tp_rank, tp_size, name="up_proj"),
        ]
    ).contiguous()


def fc1_from_megatron(shards: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split Megatron ``linear_fc1`` TP shards (in TP-rank order) back into HF ``gate_proj`` and ``up_proj``."""
    gates, ups = zip(*(s.chunk(2, dim=0) for s in shards), strict=True)
    return torch.cat(gates).contiguous(), torch.cat(ups).contiguous()


def hf_to_megatron_tensor(
    plan: TensorPlan,
    hf: Mapping[str, torch.Tensor],
    cfg: PuzzleModelConfig,
    *,
    tp_rank: int = 0,
    tp_size: int = 1,
    padded_vocab_size: int | None = None,
) -> torch.Tensor:
    """Build this TP rank's Megatron tensor for ``plan`` from its HF tensors.

    Args:
        plan: The entry to build.
        hf: HF tensors by name (at least ``plan.hf_names``).
        cfg: The architecture.
        tp_rank: Tensor-parallel rank.
        tp_size: Tensor-parallel size.
        padded_vocab_size: The model's (padded) vocabulary rows over all TP ranks; extra rows are zero.

    Returns:
        A new contiguous tensor in the HF dtype.
    """
    tensors = [hf[n] for n in plan.hf_names]
    name = plan.hf_names[0]
    if plan.kind == "replicated":
        return tensors[0].clone()
    if plan.kind == "column":
        return shard_tensor(tensors[0], 0, tp_rank, tp_size, name=name).contiguous()
    if plan.kind == "row":
        return shard_tensor(tensors[0], 1, tp_rank, tp_size, name=name).contiguous()
    if plan.kind == "vocab":
        t = tensors[0]
        rows = padded_vocab_size or t.shape[0]
        if rows < t.shape[0]:
            raise HFCheckpointError(f"{name}: {t.shape[0]} vocabulary rows do not fit the model's {rows}")
        if rows > t.shape[0]:
            t = torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])
        return shard_tensor(t, 0, tp_rank, tp_size, name=name).contiguous()
    if plan.kind == "qkv":
        return qkv_to_megatron(
            *tensors,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=plan.num_kv_heads,
            head_dim=cfg.head_dim,
            tp_rank=tp_rank,
            tp_size=tp_size,
        )
    if plan.kind == "fc1":
        return fc1_to_megatron(*tensors, tp_rank=tp_rank, tp_size=tp_size)
    raise ValueError(f"unknown tensor kind {plan.kind!r}")


def megatron_to_hf_tensors(
    plan: TensorPlan, shards: Sequence[torch.Tensor], cfg: PuzzleModelConfig
) -> dict[str, torch.Tensor]:
    """Rebuild the HF tensors of ``plan`` from its Megatron TP shards (in TP-rank order; one for replicated).

    Vocabulary padding rows beyond ``cfg.vocab_size`` are dropped.
    """
    if plan.kind == "replicated":
        return {plan.hf_names[0]: shards[0].contiguous()}
    if plan.kind == "column":
        return {plan.hf_names[0]: torch.cat(list(shards), dim=0).contiguous()}
    if plan.kind == "row":
        return {plan.hf_names[0]: torch.cat(list(shards), dim=1).contiguous()}
    if plan.kind == "vocab":
        return {plan.hf_names[0]: torch.cat(list(shards), dim=0)[: cfg.vocab_size].contiguous()}
    if plan.kind == "qkv":
        q, k, v = qkv_from_megatron(
            shards, num_heads=cfg.num_attention_heads, num_kv_heads=plan.num_kv_heads, head_dim=cfg.head_dim
        )
        return dict(zip(plan.hf_names, (q, k, v), strict=True))
    if plan.kind == "fc1":
        return dict(zip(plan.hf_names, fc1_from_megatron(shards), strict=True))
    raise ValueError(f"unknown tensor kind {plan.kind!r}")


# --------------------------------------------------------------------------------------------------------------------
# Reading HF checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _hf_weight_map(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index json, a single file, or all ``*.safetensors`` in ``path``."""
    if path.is_file():
        files = [path]
    elif (path / SAFE_INDEX_NAME).is_file():
        index = json.loads((path / SAFE_INDEX_NAME).read_text(encoding="utf-8"))
        try:
            return {name: path / fname for name, fname in index["weight_map"].items()}
        except (KeyError, AttributeError) as exc:
            raise HFCheckpointError(f"{path / SAFE_INDEX_NAME}: no 'weight_map' object") from exc
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise HFCheckpointError(f"{path}: no {SAFE_INDEX_NAME} and no *.safetensors files")
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                if name in out:
                    raise HFCheckpointError(f"tensor {name} appears in both {out[name].name} and {f.name}")
                out[name] = f
    return out


_SAFETENSORS_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}
_SAFETENSORS_ITEMSIZE |= {"U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class _HFReader:
    """Lazily opened safetensors files; reads whole tensors or slices of them, counting the bytes it returns."""

    def __init__(self, path: Path) -> None:
        self.weight_map = _hf_weight_map(path)
        self._handles: dict[Path, Any] = {}
        self.bytes_read = 0
        """Bytes of every tensor or slice returned so far (what is copied out of the files)."""

    def _handle(self, name: str) -> Any:
        from safetensors import safe_open

        f = self.weight_map[name]
        if f not in self._handles:
            if not f.is_file():
                raise HFCheckpointError(f"tensor {name}: its file {f} (from the index) does not exist")
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` from the file header (reads no data)."""
        return tuple(self._handle(name).get_slice(name).get_shape())

    def nbytes(self, name: str) -> int:
        """Size in bytes of the whole tensor ``name`` from the file header (reads no data)."""
        view = self._handle(name).get_slice(name)
        return _numel(view.get_shape()) * _SAFETENSORS_ITEMSIZE[view.get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        """The whole tensor ``name``."""
        tensor = self._handle(name).get_tensor(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def read(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (``dim=0``) or columns (``dim=1``) ``start:stop`` of tensor ``name``, read with ``get_slice``."""
        view = self._handle(name).get_slice(name)
        part = view[start:stop] if dim == 0 else view[:, start:stop]
        self.bytes_read += part.numel() * part.element_size()
        return part

    def close(self) -> None:
        self._handles.clear()


def _rank_range(size: int, tp_rank: int, tp_size: int, *, name: str, dim: int) -> tuple[int, int]:
    if size % tp_size:
        raise HFCheckpointError(f"{name}: dimension {dim} of size {size} is not divisible by TP={tp_size}")
    part = size // tp_size
    return tp_rank * part, (tp_rank + 1) * part


def _read_rank_tensor(
    plan: TensorPlan,
    reader: _HFReader,
    cfg: PuzzleModelConfig,
    *,
    tp_rank: int,
    tp_size: int,
    padded_vocab_size: int | None,
) -> torch.Tensor:
    """This TP rank's Megatron tensor for ``plan``, reading only the rows / columns of the HF tensors it needs.

    Equal to :func:`hf_to_megatron_tensor` of the whole tensors (tested bitwise), but a TP-sharded tensor costs
    ``1/TP`` of its bytes: column-parallel rows, row-parallel columns, this rank's query groups of q / k / v (a
    contiguous row range of each), this rank's rows of gate and up, this rank's vocabulary rows (padding rows are
    zeros, not read). Replicated tensors (norms) are read whole. The result may be a view into the file mapping:
    copy it before the reader closes.
    """
    names = plan.hf_names
    name = names[0]
    if plan.kind == "replicated":
        return reader.get(name)
    if plan.kind in ("column", "row"):
        dim = 0 if plan.kind == "column" else 1
        start, stop = _rank_range(reader.shape(name)[dim], tp_rank, tp_size, name=name, dim=dim)
        return reader.read(name, dim, start, stop)
    if plan.kind == "vocab":
        rows = reader.shape(name)[0]
        padded = padded_vocab_size or rows
        if padded < rows:
            raise HFCheckpointError(f"{name}: {rows} vocabulary rows do not fit the model's {padded}")
        start, stop = _rank_range(padded, tp_rank, tp_size, name=name, dim=0)
        part = reader.read(name, 0, min(start, rows), min(stop, rows))
        if part.shape[0] < stop - start:  # padding rows past the real vocabulary are zeros
            part = torch.cat([part, part.new_zeros(stop - start - part.shape[0], *part.shape[1:])])
        return part
    if plan.kind == "qkv":
        heads, kv, head_dim = cfg.num_attention_heads, plan.num_kv_heads, cfg.head_dim
        if kv % tp_size:
            raise HFCheckpointError(
                f"{plan.where()}: {kv} KV heads cannot be split over TP={tp_size} (need a multiple)"
            )
        per_group, groups = heads // kv, kv // tp_size
        g0 = tp_rank * groups
        q = reader.read(names[0], 0, g0 * per_group * head_dim, (g0 + groups) * per_group * head_dim)
        k = reader.read(names[1], 0, g0 * head_dim, (g0 + groups) * head_dim)
        v = reader.read(names[2], 0, g0 * head_dim, (g0 + groups) * head_dim)
        return qkv_to_megatron(q, k, v, num_heads=groups * per_group, num_kv_heads=groups, head_dim=head_dim)
    if plan.kind == "fc1":
        gate, up = names
        if reader.shape(gate) != reader.shape(up):
            raise HFCheckpointError(
                f"{plan.where()}: {gate} {reader.shape(gate)} and {up} {reader.shape(up)} differ in shape"
            )
        start, stop = _rank_range(reader.shape(gate)[0], tp_rank, tp_size, name=gate, dim=0)
        return torch.cat([reader.read(gate, 0, start, stop), reader.read(up, 0, start, stop)])
    raise ValueError(f"unknown tensor kind {plan.kind!r}")


def read_hf_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a whole HF safetensors checkpoint into memory (tests and small models only)."""
    reader = _HFReader(Path(path))
    try:
        return {name: reader.get(name) for name in reader.weight_map}
    finally:
        reader.close()


def _describe_hf(name: str) -> str:
    m = _HF_LAYER.match(name)
    return f"{name} (layer {m.group(1)})" if m else name


def _check_hf_names(cfg: PuzzleModelConfig, names: set[str], strict: bool) -> tuple[list[str], list[str]]:
    expected = expected_hf_tensors(cfg)
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    missing = [n for n in expected if n not in names]
    unexpected = sorted(n for n in names if n not in expected and n not in optional and not _IGNORED_HF.match(n))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append("missing tensors: " + ", ".join(_describe_hf(n) for n in missing[:20]))
        if unexpected:
            parts.append("unexpected tensors: " + ", ".join(_describe_hf(n) for n in unexpected[:20]))
        raise HFCheckpointError(
            "checkpoint does not match the config ("
            + "; ".join(parts)
            + "). Check that config.json's block_configs describe these weights."
        )
    return missing, unexpected


# --------------------------------------------------------------------------------------------------------------------
# Model introspection
# --------------------------------------------------------------------------------------------------------------------


def _chunk_layers(model: torch.nn.Module, cfg: PuzzleModelConfig) -> list[int]:
    """Global indices of the decoder layers of one (unwrapped) model chunk."""
    decoder = getattr(model, "decoder", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        return []
    out = []
    for local, layer in enumerate(layers):
        number = getattr(layer, "layer_number", None)
        if number is None:
            raise HFCheckpointError(f"decoder.layers.{local} has no layer_number; cannot tell its global index")
        out.append(int(number) - 1)
    return out


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}


def _chunk_plans(model: torch.nn.Module, cfg: PuzzleModelConfig) -> tuple[list[TensorPlan], dict[str, torch.Tensor]]:
    state = _model_state(model)
    keys = set(state)
    plans = plan_megatron_tensors(
        cfg,
        layers=_chunk_layers(model, cfg),
        has_embedding=EMBEDDING_NAME in keys,
        has_final_norm=FINAL_NORM_NAME in keys,
        has_output_layer=OUTPUT_NAME in keys,
        model_keys=keys,
    )
    return plans, state


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class LoadReport:
    """What :func:`load_hf_checkpoint` did on this rank."""

    loaded: list[str] = field(default_factory=list)
    """Megatron tensors written on this rank."""
    missing_hf: list[str] = field(default_factory=list)
    """HF tensors the config expects but the checkpoint lacks (only non-empty with ``strict=False``)."""
    unexpected_hf: list[str] = field(default_factory=list)
    """HF tensors the config does not describe (only non-empty with ``strict=False``)."""
    unfilled_model: list[str] = field(default_factory=list)
    """Model tensors nothing was loaded into (only non-empty with ``strict=False``)."""
    bytes_read: int = 0
    """Bytes this rank read out of the safetensors files (the tensors and slices it asked for; with ``sliced``
    about ``1/TP`` of each TP-sharded tensor plus every replicated one). The OS reads whole pages, so a column slice
    of a matrix whose rows are shorter than a page may touch more of the file than this counts."""
    bytes_in_tensors: int = 0
    """Full size of the HF tensors this rank read from (what reading them whole would cost)."""
    bytes_read_by_kind: dict[str, int] = field(default_factory=dict)
    """``bytes_read`` split by :attr:`TensorPlan.kind` (``replicated``, ``column``, ``row``, ``vocab``, ``qkv``,
    ``fc1``)."""


def load_hf_checkpoint(
    model_or_models: torch.nn.Module | Sequence[torch.nn.Module],
    path: str | os.PathLike[str],
    cfg: PuzzleModelConfig | None = None,
    *,
    parallel: ParallelRanks | None = None,
    strict: bool = True,
    progress: bool = True,
    sliced: bool = True,
) -> LoadReport:
    """Stream an HF DeciLM / Llama safetensors checkpoint into a Megatron model (every rank calls this).

    Each rank reads only the tensors its model chunks need (a pipeline stage: its layers), and of a TP-sharded
    tensor only its own rows or columns (``safe_open(...).get_slice``; fused q/k/v and gate/up included), one
    tensor group (e.g. q/k/v of one layer) at a time, and copies them into the parameters in place (converting
    dtype). ``LoadReport.bytes_read`` counts what it read.

    Args:
        model_or_models: The model, or a list of model chunks (virtual pipeline); DDP / Float16Module wrappers are
            unwrapped.
        path: Checkpoint directory (index json, ``model.safetensors`` or ``*.safetensors``) or one file.
        cfg: The architecture; default: ``config.json`` in ``path``.
        parallel: This rank's TP rank / size; default: megatron-core's ``parallel_state``.
        strict: Raise on missing / unexpected HF tensors and on model tensors nothing maps to.
        progress: Show a tqdm bar on rank 0.
        sliced: Read only this rank's slices (default). ``False`` reads every needed tensor whole and shards it in
            memory (the reference path the sliced one is tested against).

    Returns:
        A :class:`LoadReport`.

    Raises:
        HFCheckpointError: naming the tensor and layer that is missing, unexpected or of the wrong shape.
        BlockConfigError: the config uses a feature the model does not implement (``window_length``), naming the
            layer.
    """
    path = Path(path)
    if cfg is None:
        cfg = load_hf_config(path if path.is_dir() else path.parent)
    reject_unimplemented(cfg, source=str(path / "config.json" if path.is_dir() else path))
    if parallel is None:
        parallel = ParallelRanks.from_megatron()
    models = [model_or_models] if isinstance(model_or_models, torch.nn.Module) else list(model_or_models)
    reader = _HFReader(path)
    report = LoadReport()
    report.missing_hf, report.unexpected_hf = _check_hf_names(cfg, set(reader.weight_map), strict)
    expected = expected_hf_tensors(cfg)
    missing = set(report.missing_hf)

    work: list[tuple[TensorPlan, dict[str, torch.Tensor]]] = []
    for model in models:
        plans, state = _chunk_plans(unwrap_model(model), cfg)
        covered = set()
        for plan in plans:
            if plan.megatron_name not in state:
                raise HFCheckpointError(
                    f"{plan.where()}: the model has no tensor {plan.megatron_name} for {', '.join(plan.hf_names)}; "
                    "the model was built from a different config"
                )
            covered.add(plan.megatron_name)
            work.append((plan, state))
        unfilled = [k for k in state if k not in covered]
        if unfilled and strict:
            raise HFCheckpointError(
                f"model tensors with no HF counterpart: {unfilled[:20]} (the model and config disagree)"
            )
        report.unfilled_model += unfilled

    from tqdm.auto import tqdm

    bar = tqdm(total=len(work), desc="load HF checkpoint", unit="tensor", disable=not progress or _dist_rank() != 0)
    try:
        with torch.no_grad():
            for plan, state in work:
                if any(n in missing for n in plan.hf_names):
                    report.unfilled_model.append(plan.megatron_name)
                    bar.update(1)
                    continue
                for n in plan.hf_names:
                    shape = reader.shape(n)
                    if n in expected and shape != expected[n]:
                        raise HFCheckpointError(
                            f"{_describe_hf(n)}: shape {shape} does not match the config's {expected[n]}"
                        )
                    report.bytes_in_tensors += reader.nbytes(n)
                target = state[plan.megatron_name]
                padded = target.shape[0] * parallel.tp_size if plan.kind == "vocab" else None
                before = reader.bytes_read
                if sliced:
                    value = _read_rank_tensor(
                        plan, reader, cfg, tp_rank=parallel.tp_rank, tp_size=parallel.tp_size, padded_vocab_size=padded
                    )
                else:
                    hf = {n: reader.get(n) for n in plan.hf_names}
                    value = hf_to_megatron_tensor(
                        plan, hf, cfg, tp_rank=parallel.tp_rank, tp_size=parallel.tp_size, padded_vocab_size=padded
                    )
                kind_bytes = report.bytes_read_by_kind
                kind_bytes[plan.kind] = kind_bytes.get(plan.kind, 0) + reader.bytes_read - before
                if value.shape != target.shape:
                    raise HFCheckpointError(
                        f"{plan.where()}: {', '.join(plan.hf_names)} give {plan.megatron_name} shape "
                        f"{tuple(value.shape)} at TP rank {parallel.tp_rank}/{parallel.tp_size}, but the model has "
                        f"{tuple(target.shape)}"
                    )
                target.copy_(value)
                report.loaded.append(plan.megatron_name)
                bar.update(1)
    finally:
        bar.close()
        report.bytes_read = reader.bytes_read
        reader.close()
    return report


def load_hf_tensors(
    model_or_models: torch.nn.Module | Sequence[torch.nn.Module],
    buckets: Iterable[Iterable[tuple[str, torch.Tensor]]],
    cfg: PuzzleModelConfig,
    *,
    parallel: ParallelRanks | None = None,
) -> list[str]:
    """Copy HF-named tensors arriving in buckets (e.g. :func:`~nemotron_plugins.rl.refit.stream_hf_weights` with
    ``export_widths=False``) into a Megatron model, in place; the in-memory counterpart of :func:`load_hf_checkpoint`.

    Each Megatron tensor is written as soon as all of its HF tensors have arrived (q / k / v of a layer together,
    gate and up of ``linear_fc1`` possibly in different buckets), converted to this rank's TP shard and dtype; HF
    tensors are dropped once used, so what is held at a time is one bucket plus a pending gate or up. No collective.

    Args:
        model_or_models: The model or its chunks (wrappers are unwrapped).
        buckets: Lists of ``(hf_name, tensor)`` with the trained (not export-padded) FFN widths.
        cfg: The architecture the model was built from.
        parallel: This model's TP rank / size (default: megatron's ``parallel_state``; pass the model's own when it
            was built with a ``pg_collection``).

    Returns:
        The Megatron tensors written, in order.

    Raises:
        HFCheckpointError: An HF tensor nobody needs, a shape that does not match the model, or Megatron tensors
            left unwritten when the stream ends (all named).
    """
    parallel = parallel or ParallelRanks.from_megatron()
    models = [model_or_models] if isinstance(model_or_models, torch.nn.Module) else list(model_or_models)
    needs: dict[str, list[tuple[TensorPlan, dict[str, torch.Tensor]]]] = {}
    for model in models:
        plans, state = _chunk_plans(unwrap_model(model), cfg)
        for plan in plans:
            if plan.megatron_name not in state:
                raise HFCheckpointError(
                    f"{plan.where()}: the model has no tensor {plan.megatron_name}; it was built from another config"
                )
            for name in plan.hf_names:
                needs.setdefault(name, []).append((plan, state))
    pending: dict[str, torch.Tensor] = {}
    written: list[str] = []
    done: set[tuple[int, str]] = set()
    with torch.no_grad():
        for bucket in buckets:
            for name, tensor in bucket:
                if name not in needs:
                    raise HFCheckpointError(
                        f"{_describe_hf(name)}: the model built from the config has no place for it"
                    )
                pending[name] = tensor
                for plan, state in needs[name]:
                    key = (id(state), plan.megatron_name)
                    if key in done or not all(n in pending for n in plan.hf_names):
                        continue
                    target = state[plan.megatron_name]
                    padded = target.shape[0] * parallel.tp_size if plan.kind == "vocab" else None
                    value = hf_to_megatron_tensor(
                        plan,
                        pending,
                        cfg,
                        tp_rank=parallel.tp_rank,
                        tp_size=parallel.tp_size,
                        padded_vocab_size=padded,
                    )
                    if value.shape != target.shape:
                        raise HFCheckpointError(
                            f"{plan.where()}: {', '.join(plan.hf_names)} give {plan.megatron_name} shape "
                            f"{tuple(value.shape)} at TP rank {parallel.tp_rank}/{parallel.tp_size}, the model has "
                            f"{tuple(target.shape)} (stream the trained widths: export_widths=False)"
                        )
                    target.copy_(value)
                    done.add(key)
                    written.append(plan.megatron_name)
                # Drop HF tensors every user of which has been written.
                for n in [n for n in pending if all((id(st), pl.megatron_name) in done for pl, st in needs[n])]:
                    del pending[n]
    left = [
        plan.megatron_name
        for users in needs.values()
        for plan, st in users
        if (id(st), plan.megatron_name) not in done
    ]
    if left:
        raise HFCheckpointError(f"the stream ended before these model tensors were written: {sorted(set(left))[:20]}")
    return written


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------

_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_shard_size(size: int | str) -> int:
    """Bytes in a shard-size spec: an int, or ``"5GB"`` (10^9 units, like HF) / ``"500MiB"`` (2^20 units).

    Raises:
        ValueError: an unknown unit or a non-positive size.
    """
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", size.upper())
        if m is None or m.group(2) not in _SIZE_UNITS:
            raise ValueError(f"max_shard_size {size!r}: expected bytes or a number with B/KB/MB/GB/KiB/MiB/GiB")
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _plan_shards(entries: Sequence[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, nbytes in entries:
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        shards.append(current)
    return shards


_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _local_hf_stream(
    chunks: Sequence[tuple[list[TensorPlan], dict[str, torch.Tensor]]],
    cfg: PuzzleModelConfig,
    parallel: ParallelRanks,
    dtype: torch.dtype | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF tensors of this rank's chunks in canonical order; TP shards gathered (every TP rank must iterate it)."""
    items = [(plan, state) for plans, state in chunks for plan in plans if plan.export]
    items.sort(key=lambda ps: _order_key(ps[0], cfg))
    for plan, state in items:
        local = state[plan.megatron_name].detach()
        if plan.kind == "replicated" or parallel.tp_size == 1:
            shards = [local] * (1 if plan.kind == "replicated" else parallel.tp_size)
        else:
            shards = [torch.empty_like(local) for _ in range(parallel.tp_size)]
            torch.distributed.all_gather(shards, local.contiguous(), group=parallel.tp_group)
        if parallel.tp_rank != 0:
            continue
        for name, tensor in megatron_to_hf_tensors(plan, shards, cfg).items():
            yield name, tensor.to(dtype) if dtype is not None else tensor


def _order_key(plan: TensorPlan, cfg: PuzzleModelConfig) -> tuple[int, int]:
    if plan.layer is not None:
        return (plan.layer + 1, 0)
    if plan.megatron_name == EMBEDDING_NAME:
        return (0, 0)
    if plan.megatron_name == FINAL_NORM_NAME:
        return (cfg.num_hidden_layers + 1, 0)
    return (cfg.num_hidden_layers + 1, 1)


# --------------------------------------------------------------------------------------------------------------------
# What an export writes: the config other loaders read, FFN padding, tokenizer and generation config
# --------------------------------------------------------------------------------------------------------------------

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
"""Tokenizer files an export copies from the tokenizer directory (those that exist)."""
GENERATION_CONFIG_NAME = "generation_config.json"

# Top-level keys a plain Llama config does not have (DeciLM's remote-code map, its null global sizes).
_NOT_LLAMA_KEYS = (
    "auto_map",
    "architectures",
    "model_type",
    "intermediate_size",
    "num_key_value_heads",
    "_name_or_path",
)
_DECILM_LABELS = {"architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas"}


@dataclass(frozen=True, kw_only=True, slots=True)
class HFExportLayout:
    """How a Puzzle config is written so that other loaders read it as the same model."""

    architecture: Literal["llama", "nemotron-nas"]
    """``llama``: every layer is the same GQA + SwiGLU block (``LlamaForCausalLM``, no ``block_configs``);
    ``nemotron-nas``: ``DeciLMForCausalLM`` with decilm-style ``block_configs``."""
    config: dict[str, Any]
    """The ``config.json`` to write."""
    export_cfg: PuzzleModelConfig
    """The architecture as written (FFN widths padded, see ``ffn_padding``)."""
    ffn_padding: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Layer -> ``(trained width, written width)`` for SwiGLU FFNs zero-padded to a multiple of 256."""


def _is_plain_llama(cfg: PuzzleModelConfig) -> bool:
    first = cfg.blocks[0]
    return all(
        b.attention.kind == "gqa"
        and b.ffn.kind == "swiglu"
        and b.ffn.fused_from is None
        and b.attention.window_length is None
        and b.attention.num_key_value_heads == first.attention.num_key_value_heads
        and b.ffn.intermediate_size == first.ffn.intermediate_size
        for b in cfg.blocks
    )


def hf_export_layout(cfg: PuzzleModelConfig, *, dtype: torch.dtype | None = None) -> HFExportLayout:
    """The config an export writes for ``cfg``, readable by transformers, vLLM and NVIDIA's DeciLM code.

    - Every layer the same GQA + SwiGLU block: a plain ``LlamaForCausalLM`` config with the global
      ``num_key_value_heads`` and ``intermediate_size`` (any width works in Llama).
    - Otherwise a ``nemotron-nas`` (``DeciLMForCausalLM``) config with decilm-style ``block_configs``. DeciLM readers
      (NVIDIA's ``modeling_decilm.py``, vLLM's ``nemotron_nas``, llama.cpp) know an FFN only by ``ffn_mult`` and
      derive its width as ``int(2 * ffn_mult * hidden / 3)`` rounded UP to a multiple of 256, so a width that is
      not a multiple of 256 cannot be written. Such an FFN is written zero-padded to the next multiple of 256 (extra
      ``gate`` / ``up`` rows and ``down`` columns are zero: ``silu(0) * 0 = 0``, so the model computes exactly the
      same function; ``ffn_padding`` lists them).

    Why the old export failed: a config with such a width was written in puzzletron style labelled
    ``LlamaForCausalLM`` with the sizes only inside ``block_configs``; transformers' ``LlamaConfig`` ignores
    ``block_configs``, falls back to its defaults (``intermediate_size`` 11008, one KV head per query head) and the
    load fails on the shape mismatch.

    Args:
        cfg: The trained architecture.
        dtype: The dtype of the written tensors (sets ``torch_dtype``); default: keep the config's.

    Raises:
        HFCheckpointError: a layer uses what no HF reader implements (a sliding window; a fused FFN that would need
            padding), naming the layer.
    """
    import dataclasses

    from nemotron_plugins.puzzle.block_config import (
        FFNConfig,
        _thaw,
        ffn_mult_to_intermediate_size,
        intermediate_size_to_ffn_mult,
        make_config,
        to_hf_config,
    )

    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    if _is_plain_llama(cfg):
        extra = {k: _thaw(v) for k, v in cfg.hf_extra.items() if k not in _NOT_LLAMA_KEYS}
        block = cfg.blocks[0]
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **extra,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": block.ffn.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": block.attention.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "num_hidden_layers": cfg.num_hidden_layers,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": _thaw(cfg.rope_scaling),
            "rms_norm_eps": cfg.rms_norm_eps,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }
        if dtype_name is not None:
            config["torch_dtype"] = dtype_name
        return HFExportLayout(architecture="llama", config=config, export_cfg=cfg)

    padding: dict[int, tuple[int, int]] = {}
    blocks = []
    for i, b in enumerate(cfg.blocks):
        if b.attention.window_length is not None:
            raise HFCheckpointError(f"layer {i}: window_length is set, but the model was trained without it")
        if b.ffn.kind == "swiglu":
            width = b.ffn.intermediate_size
            padded = -(-width // 256) * 256
            if padded != width and b.ffn.fused_from is not None:
                raise HFCheckpointError(
                    f"layer {i}: the fused FFN of width {width} (fused from {list(b.ffn.fused_from)}) is not a "
                    "multiple of 256 and cannot be written for DeciLM readers; fuse to widths that sum to a "
                    "multiple of 256"
                )
            mult = b.ffn.ffn_mult
            if mult is None or ffn_mult_to_intermediate_size(mult, cfg.hidden_size) != padded:
                mult = intermediate_size_to_ffn_mult(padded, cfg.hidden_size)
            if mult is None:  # pragma: no cover - every multiple of 256 has an ffn_mult
                raise HFCheckpointError(f"layer {i}: no ffn_mult gives width {padded} at hidden {cfg.hidden_size}")
            if padded != width:
                padding[i] = (width, padded)
            ffn = FFNConfig(
                kind="swiglu",
                intermediate_size=padded,
                ffn_mult=mult,
                fused_from=b.ffn.fused_from,
                extra=b.ffn.extra,
            )
            b = dataclasses.replace(b, ffn=ffn)
        blocks.append(b)
    extra = dict(cfg.hf_extra)
    if cfg.field_style != "decilm" or extra.get("model_type") != "nemotron-nas":
        extra = {k: v for k, v in extra.items() if k not in _NOT_LLAMA_KEYS}
        extra |= {**_DECILM_LABELS, "intermediate_size": None, "num_key_value_heads": None}
    if dtype_name is not None:
        extra["torch_dtype"] = dtype_name
    export_cfg = make_config(
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        vocab_size=cfg.vocab_size,
        blocks=blocks,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rope_scaling=cfg.rope_scaling,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        field_style="decilm",
        hf_extra=extra,
        hf_keys=cfg.hf_keys if cfg.field_style == "decilm" else None,
    )
    config = to_hf_config(export_cfg, field_style="decilm")
    return HFExportLayout(architecture="nemotron-nas", config=config, export_cfg=export_cfg, ffn_padding=padding)


_FFN_HF = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")


def pad_ffn_for_export(name: str, tensor: torch.Tensor, padding: Mapping[int, tuple[int, int]]) -> torch.Tensor:
    """Zero-pad an HF FFN tensor of a padded layer (gate / up: rows, down: columns); other tensors come back as is.

    Anything that streams trained weights into a model built from an exported config (e.g. a vLLM weight refit)
    must apply the same padding: ``padding`` is :attr:`HFExportLayout.ffn_padding`.
    """
    m = _FFN_HF.match(name)
    if m is None or int(m.group(1)) not in padding:
        return tensor
    width, padded = padding[int(m.group(1))]
    if m.group(2) == "down_proj":
        return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], padded - width)], dim=1)
    return torch.cat([tensor, tensor.new_zeros(padded - width, tensor.shape[1])], dim=0)


def _hf_file_names(count: int) -> list[str]:
    if count <= 1:
        return [SAFE_SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class _ShardWriter:
    """Writes HF tensors arriving in a known order into planned shard files, keeping one shard in memory."""

    def __init__(self, out: Path, entries: Sequence[tuple[str, int]], max_bytes: int) -> None:
        self.out = out
        self.shards = _plan_shards(entries, max_bytes)
        self.file_names = _hf_file_names(len(self.shards))
        self.shard_of = {n: i for i, shard in enumerate(self.shards) for n in shard}
        self.total_size = sum(size for _, size in entries)
        self.buffer: dict[str, torch.Tensor] = {}
        self.current = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if self.shard_of.get(name) != self.current:
            raise HFCheckpointError(f"internal shard order mismatch at {name}")
        self.buffer[name] = tensor.detach().to("cpu").contiguous()
        if len(self.buffer) == len(self.shards[self.current]):
            save_file(self.buffer, str(self.out / self.file_names[self.current]), metadata={"format": "pt"})
            self.buffer = {}
            self.current += 1

    def finish(self) -> None:
        if self.current != len(self.shards):
            raise HFCheckpointError(f"export stopped after {self.current} of {len(self.shards)} shards")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {n: self.file_names[i] for n, i in self.shard_of.items()},
            }
            (self.out / SAFE_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def copy_tokenizer_files(tokenizer_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[str]:
    """Copy the tokenizer files (:data:`TOKENIZER_FILES`) of ``tokenizer_dir`` into ``out_dir``.

    Returns:
        The names copied.

    Raises:
        HFCheckpointError: ``tokenizer_dir`` holds none of them (named, with what was looked for).
    """
    import shutil

    src, out = Path(tokenizer_dir), Path(out_dir)
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not names:
        raise HFCheckpointError(
            f"tokenizer directory {src} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES[:3])}, ...); "
            "pass the directory the model's tokenizer was saved in"
        )
    for n in names:
        if (src / n).resolve() != (out / n).resolve():
            shutil.copyfile(src / n, out / n)
    return names


def _write_generation_config(out: Path, config: Mapping[str, Any], source_dirs: Sequence[Path]) -> None:
    """Copy ``generation_config.json`` from the first source that has one, else derive it from the token ids."""
    import shutil

    for src in source_dirs:
        if (src / GENERATION_CONFIG_NAME).is_file():
            if (src / GENERATION_CONFIG_NAME).resolve() != (out / GENERATION_CONFIG_NAME).resolve():
                shutil.copyfile(src / GENERATION_CONFIG_NAME, out / GENERATION_CONFIG_NAME)
            return
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    for key, token_id in _special_token_ids(out).items():
        generation.setdefault(key, token_id)
    (out / GENERATION_CONFIG_NAME).write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")


def _special_token_ids(tokenizer_dir: Path) -> dict[str, int]:
    """``{bos,eos,pad}_token_id`` from ``tokenizer_config.json`` + ``tokenizer.json`` (no tokenizer is built)."""
    try:
        names = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        backend = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    vocab = {t.get("content"): t.get("id") for t in backend.get("added_tokens") or [] if isinstance(t, dict)}
    model_vocab = (backend.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab = {**model_vocab, **vocab}
    out = {}
    for role in ("bos", "eos", "pad"):
        token = names.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(vocab.get(token), int):
            out[f"{role}_token_id"] = vocab[token]
    return out


def _copy_remote_code(config: Mapping[str, Any], source_dirs: Sequence[Path], out: Path) -> None:
    """Copy the modules ``auto_map`` points at (NVIDIA's ``*_decilm.py``) when a source directory has them."""
    import shutil

    modules = {str(v).split(".")[0] for v in (config.get("auto_map") or {}).values() if isinstance(v, str)}
    for src in source_dirs:
        for module in modules:
            if (src / f"{module}.py").is_file() and not (out / f"{module}.py").exists():
                shutil.copyfile(src / f"{module}.py", out / f"{module}.py")
        for extra in src.glob("*.py") if modules else ():
            if not (out / extra.name).exists():  # helpers the remote code imports (block_config.py, ...)
                shutil.copyfile(extra, out / extra.name)


def _finish_export(
    out: Path,
    layout: HFExportLayout,
    *,
    tokenizer_dir: str | os.PathLike[str] | None,
    source_dir: str | os.PathLike[str] | None,
) -> None:
    (out / "config.json").write_text(json.dumps(layout.config, indent=2) + "\n", encoding="utf-8")
    sources = [Path(p) for p in (tokenizer_dir, source_dir) if p is not None]
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    _write_generation_config(out, layout.config, sources)
    _copy_remote_code(layout.config, sources, out)


def export_hf_checkpoint(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    cfg: PuzzleModelConfig,
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    parallel: ParallelRanks | None = None,
    progress: bool = True,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Write the model as a Hugging Face checkpoint directory (every rank calls this).

    Tensors are gathered over TP within each pipeline stage and sent to global rank 0 one at a time; rank 0 keeps
    at most one output shard in memory and writes ``model-0000k-of-0000n.safetensors`` with
    ``model.safetensors.index.json`` (or ``model.safetensors`` when everything fits one shard), ``config.json``
    (:func:`hf_export_layout`: plain Llama when every block is standard, else nemotron-nas, FFN widths padded to a
    multiple of 256 with zeros where needed), the tokenizer files of ``tokenizer_dir`` and
    ``generation_config.json`` (copied from ``tokenizer_dir`` / ``source_dir`` when there, else from the token ids).

    Args:
        model: The model or its list of chunks (virtual pipeline); wrappers are unwrapped.
        cfg: The trained architecture.
        out_dir: Output directory (created on rank 0).
        max_shard_size: Largest shard, bytes or ``"5GB"``-style.
        dtype: Cast tensors to this dtype (default: keep the model's).
        parallel: This rank's TP ranks / group; default: megatron-core's ``parallel_state``.
        progress: Show a tqdm bar on rank 0.
        tokenizer_dir: Directory whose tokenizer files are copied (``None``: no tokenizer is written).
        source_dir: The HF checkpoint training started from: its ``generation_config.json`` and, when ``auto_map``
            names remote code, its ``*.py`` modules are copied.

    Returns:
        ``out_dir`` on rank 0, ``None`` on the other ranks.
    """
    if parallel is None:
        parallel = ParallelRanks.from_megatron()
    max_bytes = parse_shard_size(max_shard_size)
    models = [model] if isinstance(model, torch.nn.Module) else list(model)
    chunks = [_chunk_plans(unwrap_model(m), cfg) for m in models]
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = _dist_rank()
    participant = parallel.dp_rank == 0
    sender = participant and parallel.tp_rank == 0

    # Which rank sends which HF tensor, with its shape and dtype.
    offer: list[tuple[str, tuple[int, ...], str]] = []
    if sender:
        for plans, state in chunks:
            for plan in plans:
                if not plan.export:
                    continue
                shards = [state[plan.megatron_name]] * (1 if plan.kind == "replicated" else parallel.tp_size)
                metas = megatron_to_hf_tensors(plan, [_meta(s) for s in shards], cfg)
                for name, t in metas.items():
                    out_dtype = dtype if dtype is not None else state[plan.megatron_name].dtype
                    offer.append((name, tuple(t.shape), str(out_dtype)))
    if dist:
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, offer)
    else:
        gathered = [offer]

    stream = _local_hf_stream(chunks, cfg, parallel, dtype) if participant else iter(())
    if rank != 0:
        if sender:
            for _name, tensor in stream:
                torch.distributed.send(tensor.contiguous(), dst=0)
        else:
            for _ in stream:
                pass
        torch.distributed.barrier()  # return only once rank 0 has written everything
        return None

    source: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
    for src, entries in enumerate(gathered):
        for name, shape, dtype_name in entries:
            if name in source and source[name][0] != src:
                continue  # the same tensor offered twice (should not happen with dp_rank==0 senders only)
            source[name] = (src, shape, _DTYPES[dtype_name])
    expected = expected_hf_tensors(cfg)
    absent = [n for n in expected if n not in source]
    if absent:
        raise HFCheckpointError(f"no rank holds these tensors of the config: {[_describe_hf(n) for n in absent[:20]]}")

    names = list(expected)
    out_dtype = source[names[0]][2]
    layout = hf_export_layout(cfg, dtype=out_dtype)
    shapes = expected_hf_tensors(layout.export_cfg)  # padded FFN shapes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)
    writer = _ShardWriter(out, [(n, _numel(shapes[n]) * source[n][2].itemsize) for n in names], max_bytes)

    from tqdm.auto import tqdm

    backend_device = _comm_device()
    bar = tqdm(total=len(names), desc="export HF checkpoint", unit="tensor", disable=not progress)
    try:
        for name in names:
            src, shape, tdtype = source[name]
            if src == 0:
                got_name, tensor = next(stream)
                if got_name != name:
                    raise HFCheckpointError(f"internal order mismatch: expected {name}, produced {got_name}")
            else:
                tensor = torch.empty(shape, dtype=tdtype, device=backend_device)
                torch.distributed.recv(tensor, src=src)
            writer.add(name, pad_ffn_for_export(name, tensor.to("cpu"), layout.ffn_padding))
            bar.update(1)
        for _ in stream:  # drain (nothing left when everything matched)
            pass
    finally:
        bar.close()
    writer.finish()
    _finish_export(out, layout, tokenizer_dir=tokenizer_dir, source_dir=source_dir)
    if dist:
        torch.distributed.barrier()
    return out


def export_hf_state_dict(
    state: Mapping[str, torch.Tensor],
    cfg: PuzzleModelConfig,
    out_dir: str | os.PathLike[str],
    *,
    layout: Literal["hf", "megatron"] = "hf",
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a whole model held by one process as a Hugging Face checkpoint directory (no distributed setup).

    Writes the same files as :func:`export_hf_checkpoint`. Used for re-exporting an HF directory and for
    single-rank training checkpoints.

    Args:
        state: HF tensors by HF name (``layout="hf"``), or a single-rank (TP1, PP1) Megatron ``GPTModel`` state dict
            (``layout="megatron"``). Values may be lazy (e.g. memory-mapped) tensors; one shard is held at a time.
        cfg: The architecture.
        out_dir: Output directory (created).
        layout: How ``state`` is keyed.
        max_shard_size: Largest shard, bytes or ``"5GB"``-style.
        dtype: Cast tensors to this dtype (default: keep theirs).
        tokenizer_dir: Directory whose tokenizer files are copied (``None``: none).
        source_dir: Directory whose ``generation_config.json`` / remote code are copied when present.

    Returns:
        ``out_dir``.

    Raises:
        HFCheckpointError: a tensor of the config is missing from ``state`` (named with its layer).
    """
    expected = expected_hf_tensors(cfg)
    if layout == "megatron":
        plans = plan_megatron_tensors(cfg, model_keys=set(state))
        absent = [f"{p.megatron_name} ({p.where()})" for p in plans if p.megatron_name not in state]
        getter = _megatron_state_getter(state, cfg, plans)
    else:
        absent = [_describe_hf(n) for n in expected if n not in state]
        getter = state.__getitem__
    if absent:
        raise HFCheckpointError(f"the state lacks tensors of the config: {absent[:20]}")
    first = getter(next(iter(expected)))
    out_dtype = dtype if dtype is not None else first.dtype
    export = hf_export_layout(cfg, dtype=out_dtype)
    shapes = expected_hf_tensors(export.export_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)
    writer = _ShardWriter(
        out, [(n, _numel(shapes[n]) * out_dtype.itemsize) for n in expected], parse_shard_size(max_shard_size)
    )
    for name in expected:
        tensor = getter(name)
        if tuple(tensor.shape) != expected[name]:
            raise HFCheckpointError(
                f"{_describe_hf(name)}: shape {tuple(tensor.shape)}, the config says {expected[name]}"
            )
        writer.add(name, pad_ffn_for_export(name, tensor.to(out_dtype), export.ffn_padding))
    writer.finish()
    _finish_export(out, export, tokenizer_dir=tokenizer_dir, source_dir=source_dir)
    return out


def _megatron_state_getter(
    state: Mapping[str, torch.Tensor], cfg: PuzzleModelConfig, plans: Sequence[TensorPlan]
) -> Any:
    by_hf = {n: plan for plan in plans if plan.export for n in plan.hf_names}
    cache: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        if name not in cache:
            plan = by_hf[name]
            cache.clear()  # q/k/v (gate/up) of one plan are asked for one after another
            cache.update(megatron_to_hf_tensors(plan, [state[plan.megatron_name]], cfg))
        return cache[name]

    return get


def reexport_hf_checkpoint(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Rewrite an HF checkpoint directory (DeciLM / Llama, either field style) the way an export writes it.

    Tensors are streamed from the source files (memory-mapped; one output shard in memory). The config becomes
    what :func:`hf_export_layout` gives (e.g. a puzzletron-style config becomes nemotron-nas with padded FFNs, an
    all-standard one plain Llama); tokenizer files come from ``tokenizer_dir`` (default: ``src_dir``).

    Raises:
        HFCheckpointError: the source does not match its config, or has no tokenizer files.
        BlockConfigError: the source config is invalid or uses an unimplemented feature (``window_length``).
    """
    src = Path(src_dir)
    cfg = load_hf_config(src)
    reject_unimplemented(cfg, source=str(src / "config.json"))
    reader = _HFReader(src)
    try:
        _check_hf_names(cfg, set(reader.weight_map), strict=True)
        state = _LazyState(reader)
        return export_hf_state_dict(
            state,
            cfg,
            out_dir,
            max_shard_size=max_shard_size,
            dtype=dtype,
            tokenizer_dir=tokenizer_dir if tokenizer_dir is not None else src,
            source_dir=src,
        )
    finally:
        reader.close()


class _LazyState(Mapping[str, torch.Tensor]):
    def __init__(self, reader: _HFReader) -> None:
        self.reader = reader

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.reader.weight_map:
            raise KeyError(name)
        return self.reader.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader.weight_map)

    def __len__(self) -> int:
        return len(self.reader.weight_map)


def save_hf_weights(
    weights: Mapping[str, torch.Tensor], out_dir: str | os.PathLike[str], *, max_shard_size: int | str = "5GB"
) -> list[Path]:
    """Write in-memory HF tensors as safetensors shards the way transformers does (single process).

    Tensors go into ``model-0000k-of-0000n.safetensors`` files in the order given, a new file starting when the next
    tensor would make the current one exceed ``max_shard_size``, plus ``model.safetensors.index.json``; a single
    ``model.safetensors`` (no index) when everything fits one shard. Earlier weight files in ``out_dir`` are removed.

    Args:
        weights: ``{hf_name: tensor}`` in file order.
        out_dir: Directory (created).
        max_shard_size: Largest shard, bytes or ``"5GB"``-style.

    Returns:
        The weight files written, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)
    writer = _ShardWriter(
        out, [(n, t.numel() * t.element_size()) for n, t in weights.items()], parse_shard_size(max_shard_size)
    )
    for name, tensor in weights.items():
        writer.add(name, tensor)
    writer.finish()
    return [out / f for f in writer.file_names]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def _comm_device() -> torch.device:
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_backend() == "nccl"
    ):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _remove_old_weights(out: Path) -> None:
    """Remove weights of an earlier export into the same directory so no stale shard is left behind."""
    for f in list(out.glob("model*.safetensors")) + [out / SAFE_INDEX_NAME]:
        if f.is_file():
            f.unlink()


# --------------------------------------------------------------------------------------------------------------------
# Resharding a single-rank Megatron state for another layout
# --------------------------------------------------------------------------------------------------------------------


def reshard_single_rank_state(
    full_state: Mapping[str, torch.Tensor], cfg: PuzzleModelConfig, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """This rank's state dict for ``model`` (any TP / PP chunk) from a single-rank (TP1, PP1) Megatron state.

    Goes through the HF layout with the converter's pure functions (QKV regrouping, fc1 split, vocabulary padding),
    so a checkpoint written by a one-process run (e.g. the tiny SFT stage) can start a TP / PP run.

    Raises:
        HFCheckpointError: ``full_state`` lacks a tensor the architecture needs (named in the message).
    """
    hf: dict[str, torch.Tensor] = {}
    for plan in plan_megatron_tensors(cfg, model_keys=set(full_state)):
        if plan.megatron_name not in full_state:
            raise HFCheckpointError(f"single-rank state lacks {plan.megatron_name} ({plan.where()})")
        hf.update(megatron_to_hf_tensors(plan, [full_state[plan.megatron_name]], cfg))
    ranks = ParallelRanks.from_megatron()
    plans, state = _chunk_plans(model, cfg)
    out: dict[str, torch.Tensor] = {}
    for plan in plans:
        target = state[plan.megatron_name]
        padded = target.shape[0] * ranks.tp_size if plan.kind == "vocab" else None
        tensor = hf_to_megatron_tensor(
            plan, hf, cfg, tp_rank=ranks.tp_rank, tp_size=ranks.tp_size, padded_vocab_size=padded
        )
        out[plan.megatron_name] = tensor.to(target.dtype)
    return out
