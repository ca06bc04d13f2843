"""MetricsLogger: JSONL rows, resume truncation, TensorBoard events, compact progress postfix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemotron_plugins.runtime.metrics import MetricsLogger, format_metric, read_jsonl, truncate_jsonl


def test_jsonl_rows_are_appended_and_flushed(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    logger = MetricsLogger(jsonl_path=path, progress=False)
    logger.log(1, {"loss": 2.5, "lr": 1e-5})
    # Flushed per call: readable before close.
    assert [r["loss"] for r in read_jsonl(path)] == [2.5]
    logger.log(2, {"loss": 2.0, "lr": 2e-5})
    logger.close()
    logger.close()  # idempotent
    rows = read_jsonl(path)
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [(1, 2.5, 1e-5), (2, 2.0, 2e-5)]
    assert all("timestamp" in r for r in rows)

    with MetricsLogger(jsonl_path=path, progress=False) as again:  # appends, keeps history
        again.log(3, {"loss": 1.5})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]


def test_resume_truncates_rows_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(jsonl_path=path, progress=False) as log:
        for step in range(1, 8):
            log.log(step, {"loss": 10.0 - step})
    # Crash while appending step 8: a torn last line.
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')

    with MetricsLogger(jsonl_path=path, progress=False, resume_step=5) as log:
        log.log(6, {"loss": 0.25})
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] == 0.25
    assert all(json.loads(line) for line in path.read_text().splitlines())  # no torn line remains


def test_truncate_jsonl_counts_and_missing_file(tmp_path: Path) -> None:
    assert truncate_jsonl(tmp_path / "absent.jsonl", 3) == 0
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(10)))
    assert truncate_jsonl(path, 6) == 3
    assert [r["step"] for r in read_jsonl(path)] == list(range(7))
    assert truncate_jsonl(path, 6) == 0


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_jsonl(path)


def test_bad_values_are_rejected(tmp_path: Path) -> None:
    with MetricsLogger(jsonl_path=tmp_path / "m.jsonl", progress=False) as log:
        with pytest.raises(TypeError, match="metric 'loss'"):
            log.log(1, {"loss": "high"})
        with pytest.raises(ValueError, match="reserved"):
            log.log(1, {"step": 3})


def test_tensor_values_and_tensorboard_events(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    tb_dir = tmp_path / "tb"
    with MetricsLogger(jsonl_path=tmp_path / "m.jsonl", tensorboard_dir=tb_dir, progress=False) as log:
        log.log(1, {"loss": torch.tensor(1.25)})
        log.log(2, {"loss": torch.tensor([0.5])})
    assert [r["loss"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1.25, 0.5]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.25), (2, 0.5)]


def test_progress_bar_postfix_is_compact(tmp_path: Path) -> None:
    log = MetricsLogger(total=10, progress=True, progress_keys=["loss", "lr"])
    log.log(3, {"loss": 1.234567, "lr": 3e-6, "grad_norm": 0.5})
    assert log._bar.n == 3
    assert log._bar.postfix == "loss=1.235 lr=3.00e-06"
    log.close()


def test_format_metric() -> None:
    assert format_metric(0.0) == "0"
    assert format_metric(12.0) == "12"
    assert format_metric(0.123456) == "0.1235"
    assert format_metric(1e-7) == "1.00e-07"
    assert format_metric(float("nan")) == "nan"
