"""GPU options that live in the model, on CUDA in bf16: megatron's fusions available without Transformer Engine
(bias + SwiGLU activation, bias + dropout + add: on by default on CUDA; the native fused cross entropy: on request)
and activation recompute (selective, full) through
``build_puzzle_model``'s config overrides: same loss and gradients as the plain bf16 model.
Run on a GPU machine: ``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]

PLAIN = {"bias_activation_fusion": False, "bias_dropout_fusion": False}
"""The baseline: no fusion (a CUDA build turns the torch-only fusions on by default)."""

OPTIONS = {
    "fusions": {"bias_activation_fusion": True, "bias_dropout_fusion": True},
    "cross-entropy fusion": {"cross_entropy_loss_fusion": True},
    "selective recompute": {"recompute_granularity": "selective"},
    "full recompute": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def _loss_and_grads(overrides: dict) -> tuple[float, torch.Tensor]:
    cfg = tiny_puzzle_config(512, max_position_embeddings=1024)
    model = build_puzzle_model(cfg, params_dtype=torch.bfloat16, seq_length=1024, **{**PLAIN, **overrides})
    init_weights_layout_invariant_(model, seed=3)
    model.train()
    assert next(model.parameters()).is_cuda
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 512, (4, 512), generator=gen).cuda()
    labels = torch.randint(0, 512, (4, 512), generator=gen).cuda()
    loss = model(tokens, None, None, labels=labels).float().mean()
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return loss.item(), grads


@pytest.mark.parametrize("name", list(OPTIONS))
def test_bf16_option_keeps_loss_and_gradients(dist, name: str) -> None:
    base_loss, base_grads = _loss_and_grads({})
    loss, grads = _loss_and_grads(OPTIONS[name])
    rel = ((grads - base_grads).norm() / base_grads.norm()).item()
    print(f"[gpu] {name}: loss {loss:.6f} vs {base_loss:.6f}, relative gradient difference {rel:.2e}")
    assert torch.isfinite(grads).all()
    assert loss == pytest.approx(base_loss, rel=1e-3)
    assert rel < 1e-2


def test_a_cuda_build_has_the_torch_only_fusions_on(dist) -> None:
    from nemotron_plugins.puzzle.model import DEFAULT_CUDA_FUSIONS

    model = build_puzzle_model(tiny_puzzle_config(512, max_position_embeddings=1024), params_dtype=torch.bfloat16)
    assert all(getattr(model.config, name) for name in DEFAULT_CUDA_FUSIONS), DEFAULT_CUDA_FUSIONS
