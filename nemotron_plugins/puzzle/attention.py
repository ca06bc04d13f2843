"""Core attention on torch's ``scaled_dot_product_attention`` (SDPA), a drop-in for megatron's local attention.

megatron-core's local ``DotProductAttention`` materialises the ``[b, h, s, s]`` scores with ``baddbmm`` and a
separate softmax, and repeats K/V for GQA; without Transformer Engine that is the whole core attention. On an H200 it
left an 80-layer hidden-2048 model at 0.46x the same model in transformers. :class:`SDPACoreAttention` keeps
megatron's contract and calls SDPA instead (flash / memory-efficient kernels on CUDA, the fused kernel on CPU):

- in: ``query [sq, b, np, hn]``, ``key`` / ``value [sk, b, ng, hn]`` (this TP rank's heads and KV groups), out:
  ``[sq, b, np * hn]``; or, for packed (``thd``) batches, ``[t, np, hn]`` / ``[t, ng, hn]`` in, ``[t, np * hn]`` out;
- GQA without materialising repeated K/V (``enable_gqa=True``; torch < 2.5 falls back to ``repeat_interleave``);
- causal masking built in (bottom-right aligned when a KV cache makes ``sk > sq``), or megatron's boolean
  ``attention_mask`` (``True`` = masked; a row masked everywhere attends uniformly, as with megatron's ``-10000`` fill);
- megatron's softmax scale (``softmax_scale`` or ``1/sqrt(hn)``; ``apply_query_key_layer_scaling`` cancels out) and
  attention dropout (inside megatron's model-parallel RNG fork unless sequence parallel, as megatron does);
- context parallelism without TE (:mod:`nemotron_plugins.puzzle.context_parallel`: K/V all-gathered over the CP
  group, megatron's load-balanced chunks, causal mask from each rank's global positions; packed batches in megatron's
  ``thd`` CP layout, every document split in ``2 * cp`` chunks, masked to their own document);
- packed sequences through megatron's ``PackedSeqParams`` (``cu_seqlens_q`` / ``cu_seqlens_kv``): a block-diagonal
  causal mask on CPU; on CUDA FlexAttention's document mask (compiled) where available, else one SDPA call per
  document (flash kernels each).

:func:`packed_seq_params_from_segment_ids` turns packed rows (``segment_ids [b, s]``, ``-1`` on padding, as
:mod:`nemotron_plugins.data.packing` produces) into the ``PackedSeqParams`` for the flattened ``[1, b * s]`` batch
megatron's ``thd`` format expects (RoPE positions then restart at every document).

Registered as the ``"puzzle_sdpa"`` layer spec (:func:`nemotron_plugins.puzzle.layer_specs.puzzle_sdpa_layer_spec`),
the default whenever Transformer Engine is absent.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

__all__ = [
    "SDPACoreAttention",
    "block_diagonal_causal_mask",
    "non_sdpa_core_attention",
    "packed_seq_params_from_segment_ids",
    "sdpa_supports_gqa",
]


def sdpa_supports_gqa() -> bool:
    """Whether the installed torch's ``scaled_dot_product_attention`` takes ``enable_gqa`` (torch >= 2.5)."""
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # a builtin without a signature: read the documented arguments
        return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_GQA = sdpa_supports_gqa()


def packed_seq_params_from_segment_ids(segment_ids: torch.Tensor) -> Any:
    """megatron ``PackedSeqParams`` (``qkv_format="thd"``) for packed rows flattened into one ``[1, b * s]`` batch.

    Every maximal run of equal ids within a row is one segment (a document, or a padding run of ``-1``), and rows
    never join: the flattened batch has segments ``[row 0 docs..., row 0 padding, row 1 docs, ...]``. Feed the model
    ``input_ids.reshape(1, -1)`` (and labels / loss mask likewise) with these params: attention stays within each
    segment and RoPE positions restart at 0 in each, so logits equal each document run on its own.

    Args:
        segment_ids: ``[b, s]`` integer tensor; ``>= 0`` document index within the row, ``-1`` on padding.

    Returns:
        ``megatron.core.packed_seq_params.PackedSeqParams`` with int32 ``cu_seqlens_q == cu_seqlens_kv`` (on
        ``segment_ids``' device) and ``max_seqlen_q == max_seqlen_kv`` (Python ints).

    Raises:
        ValueError: ``segment_ids`` not 2-D or empty.

    Example:
        >>> p = packed_seq_params_from_segment_ids(torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0]]))
        >>> p.cu_seqlens_q.tolist(), p.max_seqlen_q
        ([0, 2, 3, 4, 8], 4)
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    if segment_ids.dim() != 2 or segment_ids.numel() == 0:
        raise ValueError(f"segment_ids must be a non-empty [batch, seq] tensor, got shape {tuple(segment_ids.shape)}")
    b, s = segment_ids.shape
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    positions = torch.nonzero(starts.reshape(-1), as_tuple=False).flatten()
    end = torch.tensor([b * s], device=segment_ids.device, dtype=positions.dtype)
    cu = torch.cat([positions, end]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max().item())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )


def block_diagonal_causal_mask(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """``[t, t]`` boolean mask (``True`` = may attend): causal within each ``cu_seqlens`` segment, nothing across.

    >>> block_diagonal_causal_mask(torch.tensor([0, 2, 3])).int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    total = int(cu_seqlens[-1].item()) if total is None else total
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)
    if doc.numel() != total:
        raise ValueError(f"cu_seqlens ends at {doc.numel()} but the packed batch has {total} tokens")
    index = torch.arange(total, device=cu_seqlens.device)
    return (doc[:, None] == doc[None, :]) & (index[:, None] >= index[None, :])


_CP_MASK_CACHE: list[Any] = []
"""The last packed context-parallel mask ``(cu_seqlens, rank, cp, mask)``: built once per batch, read by every
layer of the forward (and backward recompute)."""


def _packed_context_parallel_mask(cu_seqlens_padded: torch.Tensor, cp_rank: int, cp_size: int) -> torch.Tensor:
    """``[t / cp, t]`` boolean mask (``True`` = may attend) of this CP rank's packed queries over the keys of every
    rank in gathered order (rank 0's local tokens, then rank 1's, ...): same segment and not later."""
    from nemotron_plugins.puzzle.context_parallel import packed_document_ids, packed_local_positions

    if _CP_MASK_CACHE:
        cu, rank, cp, mask = _CP_MASK_CACHE[0]
        same = (rank, cp) == (cp_rank, cp_size) and cu.device == cu_seqlens_padded.device
        if same and cu.shape == cu_seqlens_padded.shape and torch.equal(cu, cu_seqlens_padded):
            return mask
    q_pos = packed_local_positions(cu_seqlens_padded, cp_rank, cp_size)
    k_pos = torch.cat([packed_local_positions(cu_seqlens_padded, r, cp_size) for r in range(cp_size)])
    q_doc, k_doc = packed_document_ids(cu_seqlens_padded, q_pos), packed_document_ids(cu_seqlens_padded, k_pos)
    mask = (q_doc[:, None] == k_doc[None, :]) & (q_pos[:, None] >= k_pos[None, :])
    _CP_MASK_CACHE[:] = [(cu_seqlens_padded.clone(), cp_rank, cp_size, mask)]
    return mask


def non_sdpa_core_attention(model: Any) -> str | None:
    """``"name (Class)"`` of the first core attention of ``model`` that is not :class:`SDPACoreAttention` (so an
    explicit boolean ``attention_mask`` may not reach it), or ``None`` when every one is (layers without attention
    have none)."""
    for name, module in model.named_modules():
        if name.endswith("core_attention") and not isinstance(module, SDPACoreAttention):
            return f"{name} ({type(module).__name__})"
    return None


class _FlexDocumentAttention:
    """FlexAttention with a document (block-diagonal causal) mask, compiled once per process; CUDA only."""

    compiled: Any = None
    failed: bool = False
    error: str = ""
    _mask_cache: tuple[torch.Tensor, int, Any] | None = None  # (cu_seqlens, tokens, block mask): one per batch

    @classmethod
    def block_mask(cls, cu_seqlens: torch.Tensor, t: int, device: torch.device) -> Any:
        """The document block mask of ``cu_seqlens``, built once and shared by every layer of a forward pass."""
        from torch.nn.attention.flex_attention import create_block_mask

        cached = cls._mask_cache
        if cached is not None and cached[1] == t and cached[0].shape == cu_seqlens.shape:
            if torch.equal(cached[0], cu_seqlens):
                return cached[2]
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)

        def document_causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

        mask = create_block_mask(document_causal, None, None, t, t, device=device)
        cls._mask_cache = (cu_seqlens.clone(), t, mask)
        return mask

    @classmethod
    def available(cls) -> bool:
        if cls.failed or not torch.cuda.is_available():
            return False
        import importlib.util

        try:
            return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
        except ImportError:
            return False

    @classmethod
    def run(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float) -> Any:
        """``q [1, np, t, hn]``, ``k``/``v [1, ng, t, hn]`` -> ``[1, np, t, hn]``, or ``None`` when unavailable."""
        from torch.nn.attention.flex_attention import flex_attention

        try:
            if cls.compiled is None:
                cls.compiled = torch.compile(flex_attention, dynamic=False)
            block_mask = cls.block_mask(cu_seqlens, q.shape[2], q.device)
            return cls.compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        except Exception as err:  # noqa: BLE001 - any compile / kernel failure: fall back once, loudly
            cls.failed = True
            cls.error = f"{type(err).__name__}: {err}"
            warnings.warn(
                f"FlexAttention document masks failed on this machine ({type(err).__name__}: {err}); packed "
                "sequences fall back to one SDPA call per document",
                RuntimeWarning,
                stacklevel=2,
            )
            return None


class SDPACoreAttention(MegatronModule):
    """megatron-core core attention (``DotProductAttention``'s constructor and ``forward``) on torch SDPA.

    Args:
        config: megatron ``TransformerConfig`` of the layer.
        layer_number: 1-based layer number (kept for megatron; the scale does not depend on it).
        attn_mask_type: megatron ``AttnMaskType`` (``causal`` for decoder self-attention, or ``no_mask`` /
            ``padding``: then only ``attention_mask`` masks).
        attention_type: ``"self"`` (kept for megatron).
        attention_dropout: Dropout probability; default ``config.attention_dropout``.
        softmax_scale: Scale of ``q k^T``; default ``1 / sqrt(kv_channels)``.
        cp_comm_type: Ignored: context parallelism (``config.context_parallel_size > 1``) always all-gathers K/V
            (:mod:`nemotron_plugins.puzzle.context_parallel`).
        pg_collection: megatron process groups (its ``cp`` group for context parallelism; default megatron's).
        packed_backend: ``"auto"`` (FlexAttention on CUDA when it works, else per-document SDPA; a block-diagonal
            mask on CPU), ``"mask"``, ``"flex"`` or ``"loop"``.

    Raises:
        ValueError: Sliding windows or a non-vanilla softmax, which this module does not do.
    """

    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
        packed_backend: str = "auto",
    ) -> None:
        super().__init__(config=config)
        from megatron.core.transformer.enums import AttnMaskType

        if getattr(config, "window_size", None) is not None:
            raise ValueError(f"SDPACoreAttention: sliding-window attention (window_size={config.window_size})")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ValueError(f"SDPACoreAttention: softmax_type={config.softmax_type!r}; only 'vanilla'")
        if packed_backend not in ("auto", "mask", "flex", "loop"):
            raise ValueError(f"packed_backend must be 'auto', 'mask', 'flex' or 'loop', got {packed_backend!r}")
        self.config = config
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.causal = attn_mask_type == AttnMaskType.causal
        head_dim = config.kv_channels
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
        self.dropout_p = float(config.attention_dropout if attention_dropout is None else attention_dropout)
        self.packed_backend = packed_backend
        self.cp_size = int(getattr(config, "context_parallel_size", 1) or 1)
        self._cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None

    # -------------------------------------------------------------------------------------------------- kernels
    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """SDPA on ``[b, np, sq, hn]`` / ``[b, ng, sk, hn]`` with this module's scale and dropout."""
        dropout = self.dropout_p if self.training else 0.0
        kwargs: dict[str, Any] = {}
        if k.shape[1] != q.shape[1]:
            # CUDA: flash kernels take GQA but no mask; with a mask the memory-efficient kernel needs K/V repeated
            # (else SDPA would fall back to materialising the scores).
            if _GQA and not (mask is not None and q.is_cuda):
                kwargs["enable_gqa"] = True
            else:
                repeat = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)

        def call() -> torch.Tensor:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale, **kwargs
            )

        if dropout > 0.0 and not self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                return call()
        return call()

    def _causal_mask(self, sq: int, sk: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """(explicit mask, is_causal) for causal attention of ``sq`` queries over ``sk`` keys (queries last)."""
        if not self.causal or sq == 1:
            return None, False
        if sq == sk:
            return None, True
        if sq > sk:
            raise ValueError(f"causal attention with more queries ({sq}) than keys ({sk})")
        offset = sk - sq  # a KV cache: query i sits at position offset + i
        rows = torch.arange(sq, device=device)[:, None] + offset
        return rows >= torch.arange(sk, device=device)[None, :], False

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params: Any) -> torch.Tensor:
        """``thd`` attention: ``[t, np, hn]`` -> ``[t, np * hn]``, attention within each ``cu_seqlens`` segment."""
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_kv = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if cu_q is None or cu_kv is None or not torch.equal(cu_q.cpu(), cu_kv.cpu()):
            raise ValueError("SDPACoreAttention: packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
        t = query.shape[0]
        q, k, v = (x.permute(1, 0, 2).unsqueeze(0) for x in (query, key, value))  # [1, heads, t, hn]
        backend = self.packed_backend
        if backend == "auto":
            backend = (
                "mask" if query.device.type != "cuda" else ("flex" if _FlexDocumentAttention.available() else "loop")
            )
        out = None
        if backend == "flex" and not (self.training and self.dropout_p > 0.0):
            out = _FlexDocumentAttention.run(q, k, v, cu_q.to(query.device), self.softmax_scale)
            if out is None:
                backend = "loop"
        elif backend == "flex":
            backend = "loop"  # FlexAttention has no dropout
        if out is None and backend == "mask":
            out = self._sdpa(q, k, v, mask=block_diagonal_causal_mask(cu_q.to(query.device), t), causal=False)
        elif out is None:
            bounds = cu_q.tolist()
            parts = [
                self._sdpa(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], mask=None, causal=self.causal)
                for a, e in zip(bounds[:-1], bounds[1:], strict=True)
                if e > a
            ]
            out = torch.cat(parts, dim=2)
        return out.squeeze(0).permute(1, 0, 2).reshape(t, -1)

    def _context_parallel(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, packed: Any
    ) -> torch.Tensor:
        """CP: keys / values all-gathered over the CP group, causal mask from this rank's global query positions
        (packed: and from the documents' boundaries)."""
        from nemotron_plugins.puzzle.context_parallel import gather_sequence, local_positions

        if attention_mask is not None:
            raise ValueError("SDPACoreAttention with context parallelism takes no attention_mask (causal only)")
        if not self.causal:
            raise ValueError("SDPACoreAttention with context parallelism needs causal attention")
        group = self._cp_group
        if group is None:
            from megatron.core import parallel_state

            group = parallel_state.get_context_parallel_group()
        if packed is not None:
            return self._context_parallel_packed(query, key, value, packed, group)
        sq, b, heads, hn = query.shape
        key, value = gather_sequence(key, group), gather_sequence(value, group)
        rank = torch.distributed.get_rank(group)
        q_pos = local_positions(sq, self.cp_size, rank, device=query.device)
        mask = q_pos[:, None] >= torch.arange(key.shape[0], device=query.device)[None, :]
        q, k, v = query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)
        out = self._sdpa(q, k, v, mask=mask, causal=False)
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)

    def _context_parallel_packed(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params: Any, group: Any
    ) -> torch.Tensor:
        """CP over a packed (``thd``) batch in megatron's layout (every segment split in ``2 * cp`` chunks, see
        :func:`~nemotron_plugins.puzzle.context_parallel.split_packed_batch_for_context_parallel`): ``[t / cp, np,
        hn]`` queries attend to the all-gathered keys of their own segment at earlier or equal positions."""
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        if params.qkv_format not in (None, "thd"):
            raise ValueError(f"SDPACoreAttention: packed qkv_format={params.qkv_format!r}; use 'thd'")
        cu = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_kv = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if cu is None or cu_kv is None or not torch.equal(cu.cpu(), cu_kv.cpu()):
            raise ValueError("SDPACoreAttention: packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
        t = query.shape[0]
        mask = _packed_context_parallel_mask(cu.to(query.device), torch.distributed.get_rank(group), self.cp_size)
        if mask.shape[0] != t:
            raise ValueError(
                f"SDPACoreAttention: {t} local packed tokens but cu_seqlens_q_padded gives {mask.shape[0]} per CP rank"
            )
        kv = gather_from_sequence_parallel_region(
            torch.cat([key, value], dim=-1), tensor_parallel_output_grad=True, group=group
        )
        key, value = kv.split(key.shape[-1], dim=-1)  # [t, ng, hn], ranks' local orders concatenated
        q, k, v = (x.permute(1, 0, 2).unsqueeze(0) for x in (query, key, value))  # [1, heads, tokens, hn]
        out = self._sdpa(q, k, v, mask=mask, causal=False)
        return out.squeeze(0).permute(1, 0, 2).reshape(t, -1)

    # -------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        """Attention of ``query`` over ``key`` / ``value`` (megatron's layouts, see the module docstring).

        Args:
            query: ``[sq, b, np, hn]`` (``[t, np, hn]`` when packed).
            key: ``[sk, b, ng, hn]`` (``[t, ng, hn]``).
            value: Like ``key``.
            attention_mask: ``None`` or a boolean mask broadcastable to ``[b, np, sq, sk]``, ``True`` = masked
                (replaces the causal mask, as in megatron's local attention).
            attn_mask_type: Ignored, as in megatron's ``DotProductAttention`` (the constructor's type applies).
            attention_bias: Must be ``None``.
            packed_seq_params: megatron ``PackedSeqParams`` with ``qkv_format="thd"``, or ``None``.

        Returns:
            ``[sq, b, np * hn]`` (``[t, np * hn]`` when packed).
        """
        if attention_bias is not None:
            raise ValueError("SDPACoreAttention does not take an attention_bias")
        if self.cp_size > 1:
            return self._context_parallel(query, key, value, attention_mask, packed_seq_params)
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format not in (None, "thd"):
                raise ValueError(f"SDPACoreAttention: packed qkv_format={packed_seq_params.qkv_format!r}; use 'thd'")
            return self._packed(query, key, value, packed_seq_params)
        sq, b, heads, hn = query.shape
        sk = key.shape[0]
        q, k, v = query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)
        if attention_mask is not None:
            masked = attention_mask.to(torch.bool)
            empty = masked.all(dim=-1, keepdim=True)  # [b, 1 | np, sq, 1]: rows with no key at all
            out = self._sdpa(q, k, v, mask=~(masked & ~empty), causal=False)
            if bool(empty.any()):
                # megatron fills masked scores with -10000, so such a row attends uniformly: the mean value.
                mean = v.mean(dim=2, keepdim=True).repeat_interleave(heads // v.shape[1], dim=1)
                out = torch.where(empty, mean.to(out.dtype), out)
        else:
            mask, causal = self._causal_mask(sq, sk, query.device)
            out = self._sdpa(q, k, v, mask=mask, causal=causal)
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)
