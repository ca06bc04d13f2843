"""``nemotron-plugins data synth-arithmetic`` and ``data check``."""

from __future__ import annotations

import json

from sft_row_factory import make_row

from nemotron_plugins.cli.main import main


def run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_synth_then_check(tmp_path, capsys):
    out_dir = tmp_path / "synth"
    argv = ["data", "synth-arithmetic", "--out", str(out_dir), "--n-train", "30", "--n-heldout", "10"]
    code, out, _ = run(capsys, [*argv, "--corrupt-fraction", "0.5", "--seed", "7"])
    assert code == 0
    summary = json.loads(out)
    assert summary["rows"]["sft_train"] == 60 and summary["corrupted"] == 15
    code, out, _ = run(capsys, ["data", "check", str(out_dir / "sft_train.jsonl"), "--max-seq-len", "256", "--json"])
    assert code == 0
    assert json.loads(out)["kept"] == 60


def test_check_reports_and_strict(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    rows = [make_row(), make_row(output="4"), make_row(system_prompt="detailed thinking off")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = run(capsys, ["data", "check", str(path), "--max-seq-len", "256", "--pack", "128"])
    assert code == 0
    assert "rows: 3, kept: 1, skipped: 2" in out
    assert "missing_think: 1 (lines 2)" in out and "reasoning_mismatch: 1 (lines 3)" in out
    assert "packing: rows=1" in out
    code, _, err = run(capsys, ["data", "check", str(path), "--max-seq-len", "256", "--strict"])
    assert code == 1 and "line 2: missing_think" in err
    code, _, err = run(capsys, ["data", "check", str(tmp_path / "nope.jsonl"), "--max-seq-len", "9"])
    assert code == 2 and "does not exist" in err


def test_synth_bad_arguments_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, ["data", "synth-arithmetic", "--out", str(tmp_path), "--corrupt-fraction", "3"])
    assert code == 2 and "corrupt_fraction" in err
