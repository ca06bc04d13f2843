"""``nemotron-plugins puzzle describe``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.cli.main import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "puzzle"
SUPER = FIXTURES / "llama-3_3-nemotron-super-49b-v1.json"


def test_describe_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["puzzle", "describe", str(SUPER)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "80 layers" in lines[0]
    assert any(line.split()[:4] == ["0", "gqa", "kv=8", "swiglu"] and "14336" in line for line in lines)
    assert any(line.split()[:3] == ["6", "no_op", "swiglu"] for line in lines)
    assert "49,867,145,216" in out and "200,704" in out
    assert "49 gqa, 0 linear, 31 no_op" in out


def test_describe_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["puzzle", "describe", str(FIXTURES / "nano-8b-like.json"), "--json", "--seq-len", "128"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_layers"] == 32 and len(data["layers"]) == 32
    assert data["total_params"] == 8_030_261_248
    assert data["kv_cache_bytes_per_token"] == 131_072
    assert data["seq_len"] == 128
    layer = data["layers"][0]
    assert (layer["attention_kind"], layer["kv_heads"], layer["ffn_kind"], layer["ffn_width"]) == (
        "gqa",
        8,
        "swiglu",
        14336,
    )
    assert data["flops_per_token"] == sum(x["flops_per_token"] for x in data["layers"]) + 2 * 128256 * 4096


def test_describe_accepts_checkpoint_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(SUPER.read_text())
    assert main(["puzzle", "describe", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 49_867_145_216


def _exit_code_and_stderr(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code), capsys.readouterr().err


def test_bad_json_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 64,\n "x": }')
    code, err = _exit_code_and_stderr(["puzzle", "describe", str(bad)], capsys)
    assert code == 2
    assert str(bad) in err and "line 2, column 7" in err and "Traceback" not in err


def test_invalid_block_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(SUPER.read_text())
    data["block_configs"][12]["attention"]["n_heads_in_group"] = 7
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    code, err = _exit_code_and_stderr(["puzzle", "describe", str(path), "--json"], capsys)
    assert code == 2
    assert "block_configs[12].attention.n_heads_in_group: 7 does not divide" in err


def test_missing_file_and_bad_seq_len(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_code_and_stderr(["puzzle", "describe", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "no such file" in err
    code, err = _exit_code_and_stderr(["puzzle", "describe", str(SUPER), "--seq-len", "0"], capsys)
    assert code == 2 and "--seq-len" in err


def test_console_run_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("not json")
    proc = subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "puzzle", "describe", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not valid JSON at line 1, column 1" in proc.stderr and "Traceback" not in proc.stderr
