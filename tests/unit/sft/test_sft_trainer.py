"""A few real SFT steps on the tiny Megatron Puzzle model: loss falls, exact resume, evaluation, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemotron_plugins.chat.tokenizer import load_tokenizer
from nemotron_plugins.data.packing import pack_examples
from nemotron_plugins.data.sft import SFTExample
from nemotron_plugins.launch.validation import RecipeValidationError
from nemotron_plugins.puzzle.block_config import load_hf_config
from nemotron_plugins.sft.trainer import _batch_order, _RowTensors, run_sft
from nemotron_plugins.training.checkpointing import latest_checkpoint, read_checkpoint_metadata
from tests.run_configs import tiny_sft


def _config(tmp_path, *, steps: int, save_interval: int = 0, eval_prompts: int = 0, name: str = "run"):
    return tiny_sft(
        tmp_path / name,
        f"train_steps={steps}",
        f"checkpoint.save_interval={save_interval}",
        f"evaluation.num_samples={eval_prompts}",
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
    root = Path(cfg.checkpoint.save_dir)
    assert latest_checkpoint(root) == 6
    metadata = read_checkpoint_metadata(root / "iter_0000006")
    assert metadata["config"]["task"] == "sft" and metadata["layout"]["tp"] == 1
    assert load_hf_config(root).num_hidden_layers == 6  # the architecture and tokenizer beside the steps
    assert len(load_tokenizer(root / "tokenizer")) == 106


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
        def __ror__(self, cfg):
            cfg.stop_after_steps = k
            return cfg

    return _Stop()


def test_resume_with_other_batch_layout_is_rejected_cleanly(tmp_path) -> None:
    cfg = _config(tmp_path, steps=2)
    cfg.global_batch_size = 3
    with pytest.raises(ValueError, match="global_batch_size"):
        run_sft(cfg)


def _example(n_prompt: int, n_target: int, start: int) -> SFTExample:
    ids = list(range(start, start + n_prompt + n_target))
    return SFTExample(input_ids=ids, loss_mask=[0] * n_prompt + [1] * n_target, prompt_length=n_prompt, reasoning="on")


def test_row_tensors_cut_batches_to_their_longest_row() -> None:
    rows = pack_examples([_example(3, 2, 10), _example(6, 5, 30), _example(1, 1, 50)], 32, strategy="none")
    data = _RowTensors.from_rows(rows, packed=False)
    assert data.lengths.tolist() == [5, 11, 2] and data.max_length == 32
    assert data.batch_length(torch.tensor([0, 2])) == 8  # 5 rounded up to a multiple of 8
    assert data.batch_length(torch.tensor([2, 1])) == 16
    assert data.batch_length(torch.tensor([1]), multiple=64) == 32  # never beyond the stored rows
    batch = data.collate(torch.tensor([2, 0]), 8)
    assert batch["tokens"].shape == (2, 8) and batch["attention_mask"] is None
    assert batch["tokens"][1].tolist() == [*range(10, 15), 0, 0, 0]
    assert batch["loss_mask"].sum().item() == 1 + 2  # every target token survives the cut
    assert batch["tokens"].is_contiguous() and batch["labels"].dtype == torch.long


def test_packed_rows_reach_attention_as_packed_seq_params() -> None:
    rows = pack_examples([_example(2, 2, 10), _example(1, 2, 20), _example(3, 3, 30)], 16, strategy="sequential")
    data = _RowTensors.from_rows(rows, packed=True)
    assert data.batch_length(torch.arange(len(rows))) == 16
    batch = data.collate(torch.arange(len(rows)), 8)
    assert batch["attention_mask"] is None  # never a dense [b, 1, s, s] mask
    assert batch["tokens"].shape == (1, 8 * len(rows)) and batch["loss_mask"].shape == (1, 8 * len(rows))
    params = batch["packed_seq_params"]
    assert params.qkv_format == "thd"
    bounds = params.cu_seqlens_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == 8 * len(rows)
    segments = torch.tensor([r.segment_ids[:8] for r in rows]).reshape(-1)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # each segment is one document (or padding run)
        assert len(set(segments[lo:hi].tolist())) == 1


def test_packed_and_unpacked_give_the_same_loss_over_the_same_documents(tmp_path) -> None:
    """Step 1 over ALL rows (same initial weights, same documents): the token-mean loss is the same whether each
    example has its own row or several share one row behind PackedSeqParams boundaries."""
    from nemotron_plugins.data.sft import build_sft_examples
    from nemotron_plugins.data.sources import iter_training_rows, prepare_synthetic_data, sft_row_source
    from nemotron_plugins.training.setup import load_run_tokenizer

    probe = _config(tmp_path, steps=1, name="probe")
    prepare_synthetic_data(probe.data, tmp_path / "probe")
    examples, _ = build_sft_examples(
        iter_training_rows(sft_row_source(probe.data, tmp_path / "probe"), []),
        load_run_tokenizer(probe),
        max_seq_len=96,
    )
    examples = [e for e in examples if e.reasoning == "on"]
    counts = {
        packed: len(pack_examples(examples, 192, strategy="first_fit_decreasing" if packed else "none"))
        for packed in (False, True)
    }
    assert counts[True] < counts[False]  # several documents really share rows
    losses = {}
    for packed in (False, True):
        cfg = _config(tmp_path, steps=1, name=f"packed{int(packed)}")
        cfg.data.pack_sequences = packed
        cfg.data.max_seq_length = cfg.model.seq_length = 192
        cfg.micro_batch_size, cfg.global_batch_size = 1, counts[packed]
        losses[packed] = run_sft(cfg).losses[1]
    assert abs(losses[True] - losses[False]) < 1e-5, losses


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_dynamic_padding_leaves_losses_unchanged(tmp_path, packed: bool) -> None:
    losses, lengths = {}, {}
    for dynamic in (False, True):
        cfg = _config(tmp_path, steps=3, name=f"dyn{int(dynamic)}")
        cfg.data.max_seq_length = 128  # rows of ~60-90 tokens: one per row even when packed
        cfg.model.seq_length = 128
        cfg.data.dynamic_padding = dynamic
        cfg.data.pack_sequences = packed
        losses[dynamic] = run_sft(cfg).losses
        with open(cfg.logging.jsonl_path, encoding="utf-8") as fh:
            lengths[dynamic] = [json.loads(line)["seq_length"] for line in fh]
    assert lengths[False] == [128] * 3
    assert all(n % 8 == 0 and n < 128 for n in lengths[True]), lengths[True]
    assert list(losses[True]) == [1, 2, 3]
    for step, loss in losses[False].items():
        assert abs(losses[True][step] - loss) < 1e-5, (step, loss, losses[True][step])


def test_bf16_is_refused_on_cpu_naming_the_fields(tmp_path) -> None:
    cfg = _config(tmp_path, steps=1, name="bf16")
    cfg.optimizer.bf16 = True
    with pytest.raises(RecipeValidationError, match=r"optimizer\.bf16=true is GPU-only"):
        run_sft(cfg)


def test_post_training_files_train_through_the_same_path(tmp_path) -> None:
    """Post-Training-Dataset JSONL rows (here the synthetic task's own file) through data.dataset=post_training:
    categories filtered by data.splits, the same loss as the synthetic path on the same rows."""
    synthetic = run_sft(_config(tmp_path, steps=2, name="synthetic"))
    rows = tmp_path / "synthetic" / "data" / "sft_train.jsonl"
    cfg = tiny_sft(
        tmp_path / "files",
        "train_steps=2",
        "data.dataset=post_training",
        "data.synthetic=null",
        f"data.path={rows}",
    )
    assert run_sft(cfg).losses == synthetic.losses
    cfg = tiny_sft(
        tmp_path / "none",
        "train_steps=2",
        "data.dataset=post_training",
        "data.synthetic=null",
        f"data.path={rows}",
        "data.splits=['code']",
    )
    with pytest.raises(ValueError, match="no usable training examples"):
        run_sft(cfg)
