"""A few real SFT steps on the tiny Megatron Puzzle model: loss falls, exact resume, evaluation, reload."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.runtime.config import CheckpointConfig, LoggingConfig, OptimizerConfig
from nemotron_plugins.sft.config import SFTDataConfig, SFTEvalConfig, SFTRunConfig
from nemotron_plugins.sft.trainer import _batch_order, load_sft_checkpoint, run_sft


def _config(tmp_path, *, steps: int, save_interval: int = 0, eval_prompts: int = 0, name: str = "run") -> SFTRunConfig:
    out = tmp_path / name
    return SFTRunConfig(
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0, clip_grad=1.0),
        checkpoint=CheckpointConfig(save_dir=str(out / "ckpt"), save_interval=save_interval),
        logging=LoggingConfig(log_interval=100, jsonl_path=str(out / "metrics.jsonl"), progress_bar=False),
        data=SFTDataConfig(
            num_train_problems=40, num_heldout_problems=4, min_value=1, max_value=99, max_seq_length=96
        ),
        eval=SFTEvalConfig(num_prompts=eval_prompts, max_new_tokens=3, batch_size=4),
        train_steps=steps,
        micro_batch_size=2,
        global_batch_size=4,
        output_dir=str(out),
        num_threads=2,
        seed=7,
    )


def test_batch_order_covers_epochs() -> None:
    first_epoch = [i for s in range(5) for i in _batch_order(10, s, 2, seed=3)]
    assert sorted(first_epoch) == list(range(10))
    assert _batch_order(10, 5, 2, seed=3) != _batch_order(10, 5, 2, seed=4)
    assert _batch_order(10, 4, 3, seed=1) == _batch_order(10, 4, 3, seed=1)


def test_loss_falls_and_checkpoint_reloads(tmp_path) -> None:
    cfg = _config(tmp_path, steps=6, eval_prompts=2)
    result = run_sft(cfg)
    losses = [result.losses[s] for s in range(1, 7)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.steps_done == 6 and not result.stopped_early
    assert result.eval is not None and result.eval["num_prompts"] == 2
    assert set(result.eval) >= {"on/think_format", "on/accuracy", "off/no_think", "off/accuracy"}
    ckpt = load_sft_checkpoint(cfg.checkpoint.save_dir)
    assert ckpt.step == 6 and ckpt.model_config.num_hidden_layers == 6
    assert len(ckpt.tokenizer) == 106
    assert any(k.endswith("linear_qkv.weight") for k in ckpt.model_state)


def test_kill_and_resume_reproduces_losses_exactly(tmp_path) -> None:
    full = run_sft(_config(tmp_path, steps=5, name="full"))
    first = run_sft(_config(tmp_path, steps=5, name="split") | _stop(2))
    assert first.stopped_early and first.steps_done == 2 and list(first.losses) == [1, 2]
    second = run_sft(_config(tmp_path, steps=5, name="split"))
    assert second.start_step == 2 and list(second.losses) == [3, 4, 5]
    resumed = {**first.losses, **second.losses}
    assert resumed == full.losses  # exactly equal floats


def _stop(k: int):
    class _Stop:
        def __ror__(self, cfg: SFTRunConfig) -> SFTRunConfig:
            cfg.stop_after_steps = k
            return cfg

    return _Stop()


def test_resume_with_other_batch_layout_is_rejected_cleanly(tmp_path) -> None:
    cfg = _config(tmp_path, steps=2)
    cfg.global_batch_size = 3
    with pytest.raises(ValueError, match="global_batch_size"):
        run_sft(cfg)
