"""The fused SwiGLU compiled per FFN width (``puzzle/fused_swiglu.py``) and the MLP that uses it: same values and
gradients as the eager SwiGLU, one kernel pair per width, token counts that vary (1 included) without a new width
entry, and the layer specs build every SwiGLU FFN as :class:`PuzzleMLP`. On CPU torch.compile emits C++ kernels; on
CUDA Triton ones (``tests/gpu/test_model_options_cuda.py`` and ``benchmarks/gpu_throughput.py`` run those)."""

from __future__ import annotations

import warnings

import pytest
import torch

from nemotron_plugins.puzzle import fused_swiglu as module
from nemotron_plugins.puzzle.fused_swiglu import PuzzleMLP, fused_swiglu, swiglu_reference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("width", [4, 6])
def test_values_and_gradients_equal_the_eager_swiglu_for_any_token_count(width) -> None:
    torch.manual_seed(width)
    for shape in ((5, 2), (3, 1), (1, 1)):
        y = torch.randn(*shape, 2 * width, dtype=torch.float64, requires_grad=True)
        grad = torch.randn(*shape, width, dtype=torch.float64)
        out = fused_swiglu(y)
        (got,) = torch.autograd.grad(out, y, grad)
        ref = swiglu_reference(y)
        (want,) = torch.autograd.grad(ref, y, grad)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(
        fused_swiglu, (torch.randn(3, 2 * width, dtype=torch.float64, requires_grad=True),)
    )
    widths = {key[0] for key in module._KERNELS if key[1] == torch.float64}
    assert 2 * width in widths  # one compiled pair per width, whatever the token count


def test_an_odd_width_is_refused() -> None:
    with pytest.raises(ValueError, match="must be even"):
        fused_swiglu(torch.zeros(2, 5))


def test_the_model_uses_it_when_the_fusion_is_on_with_the_eager_results() -> None:
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.runtime.distributed import distributed_context

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context(seed=0):
            model = build_puzzle_model(tiny_puzzle_config(128), device="cpu", seq_length=16)
            mlps = [m for m in model.modules() if isinstance(m, PuzzleMLP)]
            assert len(mlps) == 4  # the tiny model's four SwiGLU FFNs (widths 384, 256, 256, 384)
            tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))

            def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
                model.zero_grad(set_to_none=True)
                loss = model(tokens, None, None, labels=torch.roll(tokens, -1, 1)).float().mean()
                loss.backward()
                return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

            assert not any(m.config.bias_activation_fusion for m in mlps)  # CPU default: off
            eager_loss, eager_grads = run()
            for m in mlps:
                m.config.bias_activation_fusion = True  # what a CUDA build sets (fusion_settings)
            calls = []
            original = module._FusedSwiGLU.apply
            module._FusedSwiGLU.apply = lambda y: calls.append(y.shape[-1]) or original(y)
            try:
                fused_loss, fused_grads = run()
            finally:
                module._FusedSwiGLU.apply = original
    assert sorted(calls) == [512, 512, 768, 768]
    torch.testing.assert_close(fused_loss, eager_loss, rtol=1e-6, atol=1e-6)
    for got, want in zip(fused_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
