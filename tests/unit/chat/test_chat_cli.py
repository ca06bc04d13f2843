"""``nemotron-plugins chat render`` and ``chat parse``."""

from __future__ import annotations

import io
import json
import sys

import pytest

from nemotron_plugins.chat.render import render_chat
from nemotron_plugins.cli.main import main


def run(monkeypatch, capsys, argv, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


MESSAGES = [{"role": "user", "content": " What is 2+2? "}]


def test_render_writes_exactly_the_rendered_text(monkeypatch, capsys):
    code, out, _ = run(
        monkeypatch, capsys, ["chat", "render", "--template", "llama-nemotron-super"], json.dumps(MESSAGES)
    )
    assert code == 0
    assert out == render_chat(MESSAGES)
    assert not out.endswith("\n")


def test_render_options(monkeypatch, capsys):
    argv = ["chat", "render", "--generation-prompt", "--reasoning", "on", "--bos-token", "<s>"]
    code, out, _ = run(monkeypatch, capsys, argv, json.dumps(MESSAGES))
    assert code == 0
    assert out == (
        "<s><|start_header_id|>system<|end_header_id|>\n\ndetailed thinking on<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_render_nano_with_tools_file(monkeypatch, capsys, tmp_path):
    tools = [{"name": "f", "parameters": {}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    argv = ["chat", "render", "--template", "llama-nemotron-nano", "--tools", str(tmp_path / "tools.json")]
    code, out, _ = run(monkeypatch, capsys, argv, json.dumps(MESSAGES))
    assert code == 0
    assert out == render_chat(MESSAGES, template="llama-nemotron-nano", tools=tools)


@pytest.mark.parametrize(
    ("stdin", "argv_extra", "message"),
    [
        ("{not json", [], "not valid JSON"),
        ('{"role": "user"}', [], "must be a JSON list"),
        ('[{"role": "robot", "content": "x"}]', [], "messages[0].role is 'robot'"),
        ('[{"role": "user", "content": 5}]', [], "messages[0].content must be a string"),
        ('[{"role": "user", "content": "x"}]', ["--template", "nope"], "unknown template 'nope'"),
    ],
)
def test_render_bad_input_exits_2(monkeypatch, capsys, stdin, argv_extra, message):
    code, out, err = run(monkeypatch, capsys, ["chat", "render", *argv_extra], stdin)
    assert code == 2
    assert out == ""
    assert message in err


def test_parse_command(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, ["chat", "parse", "--reasoning", "on"], "<think>r</think>\n\n4")
    assert code == 0
    assert json.loads(out) == {"reasoning": "r", "answer": "4", "errors": []}
    code, out, _ = run(monkeypatch, capsys, ["chat", "parse", "--reasoning", "off"], "<think>r</think>4")
    assert code == 1
    assert json.loads(out)["errors"][0].startswith("think_in_off_mode")


def test_render_via_console_script_subprocess():
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "chat", "render", "--generation-prompt"],
        input=json.dumps(MESSAGES),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_chat(MESSAGES, add_generation_prompt=True)
