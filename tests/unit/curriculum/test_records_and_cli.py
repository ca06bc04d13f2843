"""Bad input errors name the line; the plan / filter CLI end to end (in process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nemotron_plugins.cli.main import main
from nemotron_plugins.curriculum.records import CurriculumInputError, load_pass_rates, validate_pass_rate_array


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({"id": "c"}, "line 3: field 'pass_rate' is missing"),
        ({"id": "c", "pass_rate": "0.5"}, "line 3: field 'pass_rate' must be a number"),
        ({"id": "c", "pass_rate": True}, "line 3: field 'pass_rate' must be a number"),
        ({"id": "c", "pass_rate": None}, "line 3: field 'pass_rate' is missing or null"),
        ('{"id": "c", "pass_rate": NaN}', "line 3: field 'pass_rate' is NaN"),
        ({"id": "c", "pass_rate": 1.5}, "line 3: field 'pass_rate' is 1.5, outside [0, 1]"),
        ({"id": "c", "pass_rate": -0.1}, "outside [0, 1]"),
        ({"id": "a", "pass_rate": 0.1}, "line 3: duplicate id 'a' (first seen on line 1)"),
        ({"pass_rate": 0.1}, "line 3: field 'id' is missing"),
        ("{not json", "line 3: not valid JSON"),
        ("[1, 2]", "line 3: expected a JSON object"),
    ],
)
def test_bad_lines_are_named(tmp_path, bad_line, message):
    path = _write(tmp_path / "d.jsonl", [{"id": "a", "pass_rate": 0.5}, {"id": "b", "pass_rate": 0.0}, bad_line])
    with pytest.raises(CurriculumInputError) as info:
        load_pass_rates(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"id": 1, "pass_rate": 0.25}, "", {"id": 2, "pass_rate": 1}])
    table = load_pass_rates(path)
    assert table.ids == [1, 2]
    assert table.line_numbers == [1, 3]
    np.testing.assert_array_equal(table.pass_rates, [0.25, 1.0])


def test_array_validation_names_the_index():
    with pytest.raises(CurriculumInputError, match=r"pass_rates\[2\] is nan"):
        validate_pass_rate_array([0.1, 0.2, float("nan")])
    with pytest.raises(CurriculumInputError, match="empty"):
        validate_pass_rate_array([])


def _dataset(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.integers(0, 9, n) / 8
    return _write(tmp_path / "rates.jsonl", [{"id": f"p{i}", "pass_rate": float(r)} for i, r in enumerate(rates)])


def test_plan_json_output(tmp_path, capsys):
    path = _dataset(tmp_path)
    assert main(["curriculum", "plan", "--input", str(path), "--batch-size", "32", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"batches", "mean_pass_rate"}
    assert len(out["batches"]) == 300 // 32 == len(out["mean_pass_rate"])
    assert all(len(b) == 32 for b in out["batches"])
    flat = [i for b in out["batches"] for i in b]
    assert len(set(flat)) == len(flat)
    rates = {json.loads(line)["id"]: json.loads(line)["pass_rate"] for line in path.read_text().splitlines()}
    for batch, mean in zip(out["batches"], out["mean_pass_rate"], strict=True):
        assert mean == pytest.approx(np.mean([rates[i] for i in batch]), abs=1e-6)
    assert out["mean_pass_rate"][0] > out["mean_pass_rate"][len(out["batches"]) // 2]
    # Same seed, same plan; another seed, another plan.
    main(["curriculum", "plan", "--input", str(path), "--batch-size", "32", "--seed", "3", "--json"])
    assert json.loads(capsys.readouterr().out) == out
    main(["curriculum", "plan", "--input", str(path), "--batch-size", "32", "--seed", "4", "--json"])
    assert json.loads(capsys.readouterr().out)["batches"] != out["batches"]


def test_plan_table_and_plot(tmp_path, capsys):
    path = _dataset(tmp_path)
    png = tmp_path / "plan.png"
    code = main(
        ["curriculum", "plan", "--input", str(path), "--batch-size", "16", "--balance", "sinkhorn", "--plot", str(png)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "300 prompts -> 18 batches of 16" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        ([{"id": 1, "pass_rate": 0.5}], ["--batch-size", "2"], "larger than the data (1 prompts)"),
        ([{"id": 1, "pass_rate": "high"}], ["--batch-size", "1"], "line 1: field 'pass_rate' must be a number"),
        ([{"id": 1, "pass_rate": 0.5}, {"id": 1, "pass_rate": 0.2}], ["--batch-size", "1"], "line 2: duplicate id"),
        ([{"id": 1, "pass_rate": 0.5}], ["--batch-size", "1", "--width", "0"], "width must be a finite number > 0"),
    ],
)
def test_plan_errors_are_clear(tmp_path, capsys, lines, args, message):
    path = _write(tmp_path / "d.jsonl", lines)
    with pytest.raises(SystemExit) as info:
        main(["curriculum", "plan", "--input", str(path), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_filter_cli_drops_at_or_above_threshold(tmp_path, capsys):
    rows = [{"id": i, "pass_rate": r, "extra": "x"} for i, r in enumerate([0.0, 0.125, 0.5, 0.74, 0.75, 0.875, 1.0])]
    src = _write(tmp_path / "in.jsonl", rows)
    dst = tmp_path / "out.jsonl"
    assert main(["curriculum", "filter", "--input", str(src), "--output", str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kept = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in kept] == [0, 1, 2, 3]
    assert kept[0] == rows[0]  # lines copied unchanged
    assert (report["total"], report["kept"], report["dropped_high"], report["dropped_low"]) == (7, 4, 3, 0)
    by_bin = {(b["low"], b["high"]): b for b in report["bins"]}
    assert by_bin[(0.7, 0.8)]["dropped_high"] == 1 and by_bin[(0.7, 0.8)]["kept"] == 1  # 0.74 kept, 0.75 dropped
    assert by_bin[(0.9, 1.0)]["dropped_high"] == 1
    # A lower bound as well, with the table output.
    args = ["--input", str(src), "--output", str(dst), "--min-pass-rate", "0.125"]
    assert main(["curriculum", "filter", *args]) == 0
    out = capsys.readouterr().out
    assert "dropped: 3 at/above the maximum, 1 below the minimum" in out
    assert [json.loads(line)["id"] for line in dst.read_text().splitlines()] == [1, 2, 3]


def test_filter_rejects_bad_thresholds(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [{"id": 1, "pass_rate": 0.5}])
    with pytest.raises(SystemExit):
        main(["curriculum", "filter", "--input", str(src), "--output", str(tmp_path / "o"), "--min-pass-rate", "0.9"])
    assert "min_pass_rate must be in [0, max_pass_rate=0.75)" in capsys.readouterr().err
