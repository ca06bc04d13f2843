"""Stage 3, replace-1-block scoring and per-block cost; and the MIP problem built from them.

Each library variant is swapped into the parent alone and the whole model is run on held-out tokens; its score is
the mean per-token KL divergence ``KL(parent || child)`` of the next-token distributions (``metric="kl"``, Puzzle's
best) or the child's LM loss (``metric="lm_loss"``). Costs: parameters and KV bytes from
:mod:`nemotron_plugins.puzzle.cost`, runtime measured here (median wall time of the sub-block's forward on a
``[batch, seq]`` input on this machine's CPU), or imported from a file measured elsewhere.

Decoupled search space: a layer's options are every (attention variant, FFN variant) pair, with quality ``-(score_attn
+ score_ffn)`` and costs summed, as Puzzle combines decoupled BLD blocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nemotron_plugins.puzzle.block_config import PuzzleModelConfig
from nemotron_plugins.puzzle.cost import (
    attention_kv_cache_bytes_per_token,
    attention_params,
    estimate_cost,
    ffn_params,
)
from nemotron_plugins.puzzle.search import hf_forward
from nemotron_plugins.puzzle.search.library import Variant, substitute
from nemotron_plugins.puzzle.search.mip import BlockOption, SearchProblem

__all__ = ["VariantScore", "build_problem", "kl_per_sequence", "kl_to_parent", "score_variants", "variant_cost"]


@dataclass(frozen=True, kw_only=True, slots=True)
class VariantScore:
    """Score and cost of one library variant."""

    layer: int
    """Parent layer."""
    part: str
    """``attention`` or ``ffn``."""
    name: str
    """Variant name."""
    score: float
    """KL to the parent (or LM loss) with only this variant swapped in; lower is better."""
    params: int
    """Parameters of the sub-block."""
    kv_bytes_per_token: int
    """KV-cache bytes per token (bf16)."""
    runtime_s: dict[int, float]
    """Measured seconds of the sub-block's forward, by batch size."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["runtime_s"] = {str(k): v for k, v in self.runtime_s.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantScore:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "runtime_s": {int(k): float(v) for k, v in data["runtime_s"].items()}})


def _token_kl(parent_logits: torch.Tensor, child_logits: torch.Tensor) -> torch.Tensor:
    """Per position, ``KL(parent || child)`` of the next-token distributions (fp64 softmax): ``logits.shape[:-1]``."""
    logp = F.log_softmax(parent_logits.double(), dim=-1)
    logq = F.log_softmax(child_logits.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _kl(parent_logits: torch.Tensor, child_logits: torch.Tensor) -> float:
    return float(_token_kl(parent_logits, child_logits).mean())


@torch.no_grad()
def kl_per_sequence(
    parent_cfg: PuzzleModelConfig,
    parent_weights: Mapping[str, torch.Tensor],
    child_cfg: PuzzleModelConfig,
    child_weights: Mapping[str, torch.Tensor],
    tokens: torch.Tensor,
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """Per sequence of ``tokens`` ``[n, seq]``, the mean over its positions of ``KL(parent || child)`` of the
    next-token distributions (fp64 softmax), batched ``batch_size`` rows at a time: ``[n]`` float64."""
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        ids = tokens[start : start + batch_size]
        parent = hf_forward.forward(parent_cfg, parent_weights, ids)
        out.append(_token_kl(parent, hf_forward.forward(child_cfg, child_weights, ids)).mean(-1))
    return torch.cat(out)


def kl_to_parent(
    parent_cfg: PuzzleModelConfig,
    parent_weights: Mapping[str, torch.Tensor],
    child_cfg: PuzzleModelConfig,
    child_weights: Mapping[str, torch.Tensor],
    tokens: torch.Tensor,
    *,
    batch_size: int = 16,
) -> float:
    """Mean per-token ``KL(parent || child)`` over ``tokens`` ``[n, seq]`` (see :func:`kl_per_sequence`)."""
    return float(
        kl_per_sequence(parent_cfg, parent_weights, child_cfg, child_weights, tokens, batch_size=batch_size).mean()
    )


def _lm_loss(child_logits: torch.Tensor, ids: torch.Tensor) -> float:
    return float(F.cross_entropy(child_logits[:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten()))


@torch.no_grad()
def _runtime(cfg: PuzzleModelConfig, weights: Mapping[str, torch.Tensor], var: Variant, batch: int, seq: int) -> float:
    if not var.tensors:
        return 0.0
    child_cfg, child_w = substitute(cfg, weights, [var])
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(batch, seq, cfg.hidden_size, generator=gen, dtype=next(iter(weights.values())).dtype)
    norm = var.tensors["input_layernorm.weight" if var.part == "attention" else "post_attention_layernorm.weight"]

    def run() -> None:
        x = hf_forward.rms_norm(h, norm, cfg.rms_norm_eps)
        if var.part == "attention":
            hf_forward.attention(child_cfg, child_w, var.layer, x)
        else:
            hf_forward.ffn(child_cfg, child_w, var.layer, x)

    run()  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def score_variants(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    variants: Sequence[Variant],
    held_out: torch.Tensor,
    *,
    metric: str = "kl",
    batch_sizes: Sequence[int] = (1,),
    seq_len: int = 128,
    runtimes: Mapping[tuple[int, str, str], Mapping[int, float]] | None = None,
) -> list[VariantScore]:
    """Replace-1-block score and cost of every variant.

    Args:
        cfg: the parent.
        weights: its HF tensors.
        variants: the library.
        held_out: token ids ``[batch, seq]`` not used for calibration or BLD.
        metric: ``kl`` (to the parent's logits) or ``lm_loss``.
        batch_sizes: batch sizes to measure runtimes at.
        seq_len: sequence length of the runtime measurement.
        runtimes: imported runtimes ``{(layer, part, name): {batch: seconds}}``; measured here when ``None``.

    Returns:
        One :class:`VariantScore` per variant, in order.
    """
    if metric not in ("kl", "lm_loss"):
        raise ValueError(f"metric must be 'kl' or 'lm_loss', got {metric!r}")
    parent = hf_forward.forward(cfg, weights, held_out)
    out = []
    for var in variants:
        child_cfg, child_w = substitute(cfg, weights, [var])
        logits = hf_forward.forward(child_cfg, child_w, held_out)
        score = _kl(parent, logits) if metric == "kl" else _lm_loss(logits, held_out)
        params, kv, rt = variant_cost(cfg, weights, var, batch_sizes=batch_sizes, seq_len=seq_len, runtimes=runtimes)
        out.append(
            VariantScore(
                layer=var.layer,
                part=var.part,
                name=var.name,
                score=score,
                params=params,
                kv_bytes_per_token=kv,
                runtime_s=rt,
            )
        )
    return out


def variant_cost(
    cfg: PuzzleModelConfig,
    weights: Mapping[str, torch.Tensor],
    var: Variant,
    *,
    batch_sizes: Sequence[int] = (1,),
    seq_len: int = 128,
    runtimes: Mapping[tuple[int, str, str], Mapping[int, float]] | None = None,
) -> tuple[int, int, dict[int, float]]:
    """Parameters, KV bytes per token and runtimes by batch size of one variant's sub-block.

    Runtimes are imported from ``runtimes`` when given, else measured here (plain-torch sub-block forward, median of
    5).

    Raises:
        KeyError: ``runtimes`` has no entry for the variant.
    """
    if var.part == "attention":
        params = attention_params(var.attention, cfg)
        kv = attention_kv_cache_bytes_per_token(var.attention, cfg)
    else:
        params, kv = ffn_params(var.ffn, cfg.hidden_size), 0
    key = (var.layer, var.part, var.name)
    if runtimes is not None:
        if key not in runtimes:
            raise KeyError(f"imported runtimes have no entry for layer {var.layer} {var.part} {var.name!r}")
        return params, kv, {int(b): float(runtimes[key][b]) for b in batch_sizes}
    return params, kv, {b: _runtime(cfg, weights, var, b, seq_len) for b in batch_sizes}


def build_problem(cfg: PuzzleModelConfig, scores: Sequence[VariantScore]) -> SearchProblem:
    """The MIP problem: per layer every (attention, FFN) pair, quality ``-(score_a + score_f)``, costs summed.

    Fixed parameters are the embedding, lm head and final norm of ``cfg``; fixed runtime is 0 (the same for every
    child, it does not change which child wins under a latency limit only through the limit itself).
    """
    by_layer: dict[int, dict[str, list[VariantScore]]] = {}
    for s in scores:
        by_layer.setdefault(s.layer, {"attention": [], "ffn": []})[s.part].append(s)
    layers = []
    for i in range(cfg.num_hidden_layers):
        parts = by_layer.get(i)
        if parts is None or not parts["attention"] or not parts["ffn"]:
            raise ValueError(f"layer {i} has no scored attention or FFN variant; rerun `puzzle score`")
        opts = []
        for a in parts["attention"]:
            for f in parts["ffn"]:
                batches = set(a.runtime_s) & set(f.runtime_s)
                opts.append(
                    BlockOption(
                        name=f"attn={a.name} ffn={f.name}",
                        quality=-(a.score + f.score),
                        params=a.params + f.params,
                        kv_bytes_per_token=a.kv_bytes_per_token,
                        runtime_s={b: a.runtime_s[b] + f.runtime_s[b] for b in batches},
                    )
                )
        layers.append(tuple(opts))
    cost = estimate_cost(cfg)
    fixed = cost.embedding_params + cost.lm_head_params + cost.final_norm_params
    return SearchProblem(layers=tuple(layers), fixed_params=fixed)
