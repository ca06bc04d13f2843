"""The fusions the model config builder chooses: megatron's torch-only fusions (bias + SwiGLU, bias + dropout + add)
on for a CUDA run when torch.compile's Triton backend is there, nothing on CPU, library-bound fusions only on
request and refused where the library is missing; ``model.overrides`` reaches the ``TransformerConfig``. Checked on
CPU for a CUDA run without running CUDA (``tests/gpu/test_model_options_cuda.py`` runs them on a GPU)."""

from __future__ import annotations

import pytest

from nemotron_plugins.puzzle import model as puzzle_model
from nemotron_plugins.puzzle.model import (
    DEFAULT_CUDA_FUSIONS,
    FUSION_FIELDS,
    PuzzleModelError,
    fusion_settings,
    puzzle_transformer_config,
)
from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _fusions(config) -> dict[str, bool]:
    return {name: getattr(config, name) for name in FUSION_FIELDS}


@pytest.fixture
def triton(monkeypatch):
    monkeypatch.setattr(puzzle_model, "_have_triton", lambda: True)


def test_a_cuda_run_gets_the_torch_only_fusions(triton) -> None:
    config = puzzle_transformer_config(tiny_puzzle_config(128), device_type="cuda")
    assert set(DEFAULT_CUDA_FUSIONS) == {"bias_activation_fusion", "bias_dropout_fusion"}
    assert _fusions(config) == {name: name in DEFAULT_CUDA_FUSIONS for name in FUSION_FIELDS}
    assert config.masked_softmax_fusion is False and config.persist_layer_norm is False
    assert config.cross_entropy_fusion_impl == "native"


def test_cpu_and_meta_runs_and_cuda_without_triton_get_none(monkeypatch) -> None:
    monkeypatch.setattr(puzzle_model, "_have_triton", lambda: True)
    for device in ("cpu", "meta"):
        assert not any(_fusions(puzzle_transformer_config(tiny_puzzle_config(128), device_type=device)).values())
    monkeypatch.setattr(puzzle_model, "_have_triton", lambda: False)
    assert not any(fusion_settings("cuda").values())


def test_overrides_switch_fusions_and_refuse_missing_libraries(triton, monkeypatch) -> None:
    config = puzzle_transformer_config(
        tiny_puzzle_config(128),
        device_type="cuda",
        bias_dropout_fusion=False,
        cross_entropy_loss_fusion=True,
        recompute_granularity="selective",
    )
    assert config.bias_activation_fusion and not config.bias_dropout_fusion and config.cross_entropy_loss_fusion
    assert config.recompute_granularity == "selective"  # other TransformerConfig overrides still pass through
    monkeypatch.setattr("nemotron_plugins.puzzle.layer_specs.have_transformer_engine", lambda: False)
    with pytest.raises(PuzzleModelError, match="apply_rope_fusion=true needs Transformer Engine"):
        fusion_settings("cuda", {"apply_rope_fusion": True})
    with pytest.raises(PuzzleModelError, match="bias_activation_fusion=true needs CUDA"):
        fusion_settings("cpu", {"bias_activation_fusion": True})
    with pytest.raises(PuzzleModelError, match="must be true or false"):
        fusion_settings("cuda", {"bias_dropout_fusion": "yes"})
    with pytest.raises(PuzzleModelError, match="unknown fusion 'masked_softmax_fusion'"):
        fusion_settings("cuda", {"masked_softmax_fusion": True})
    assert fusion_settings("cpu", {"bias_activation_fusion": False})["bias_activation_fusion"] is False


def test_model_overrides_reach_the_model_settings(tmp_path) -> None:
    from nemotron_plugins.launch.validation import validate_for_run
    from nemotron_plugins.training.setup import RunSetupError, load_architecture, model_settings
    from tests.run_configs import tiny_sft

    run = tiny_sft(tmp_path)
    run.model.overrides = {"bias_dropout_fusion": False, "cross_entropy_loss_fusion": True}
    settings = model_settings(run)
    assert settings["bias_dropout_fusion"] is False and settings["cross_entropy_loss_fusion"] is True
    load_architecture(run)  # fusion switches are not HF architecture keys, and not refused as unknown ones
    bad = tiny_sft(tmp_path)
    bad.model.overrides = {"bias_dropout_fusion": 1}
    with pytest.raises((RunSetupError, ValueError), match="model.overrides.bias_dropout_fusion must be true or false"):
        validate_for_run(bad)
