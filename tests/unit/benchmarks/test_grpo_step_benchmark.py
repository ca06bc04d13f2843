"""Smoke test of ``benchmarks/grpo_step.py``: both engines run one tiny step and the table has both rows.

No timing is asserted beyond "positive": the numbers depend on the machine's load.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "grpo_step.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script imported as a module."""
    spec = importlib.util.spec_from_file_location("grpo_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_settings_are_validated(bench):
    settings, _ = bench.parse_args(["--prompts", "3", "--generations", "2", "--micro-batch-size", "4"])
    with pytest.raises(ValueError, match="micro-batch-size 4 must divide"):
        settings.validate()
    settings, _ = bench.parse_args(["--generations", "1"])
    with pytest.raises(ValueError, match="generations must be >= 2"):
        settings.validate()
    settings, _ = bench.parse_args(["--quick"])
    settings.validate()
    assert (settings.prompts, settings.generations, settings.max_new_tokens, settings.micro) == (4, 4, 16, 16)
    assert bench.main(["--steps", "0"]) == 2


def test_table_layout_and_ratio(bench):
    ours = bench.EngineResult(
        engine="ours (megatron-core)",
        params=100,
        model="m",
        steps=[bench.StepTimes(rollout_s=1.0, reward_s=0.5, step_s=3.0, generated_tokens=10, train_s=1.2)],
    )
    trl = bench.EngineResult(
        engine="TRL GRPOTrainer",
        params=200,
        model="m",
        steps=[bench.StepTimes(rollout_s=2.0, reward_s=0.5, step_s=6.0, generated_tokens=20)],
    )
    assert ours.steps[0].update_s == pytest.approx(1.5)
    table = bench.format_table([ours, trl]).splitlines()
    assert table[0].split()[:3] == ["engine", "params", "rollout"]
    ratio = table[-1].split()
    assert ratio[:2] == ["ratio", "ours/TRL"]
    assert ratio[2:] == ["0.50x", "0.50x", "1.00x", "0.43x", "0.50x", "1.00x"]  # params, rollout, reward, update, ...


def test_busy_machine_warning(bench):
    assert bench.busy_warning(0.3, threads=2, cpus=2) is None
    assert bench.busy_warning(1.2, threads=2, cpus=4) is None  # two cores are left to the others
    assert "load average 3.10 on 2 CPUs" in bench.busy_warning(3.1, threads=2, cpus=2)


def test_one_tiny_step_of_both_engines(bench, tmp_path, capsys, monkeypatch):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    # A CPU comparison (TRL runs with use_cpu=True): on a GPU machine ours runs on the CPU too, CUDA hidden.
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "grpo_step.json"
    argv = ["--steps", "1", "--warmup", "0", "--prompts", "2", "--generations", "2", "--max-new-tokens", "4"]
    assert bench.main([*argv, "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith(("ours (megatron-core)", "TRL "))]
    assert len(rows) == 2, printed
    assert any(line.startswith("ratio ours/TRL") for line in printed.splitlines())
    report = json.loads(out.read_text())
    assert report["settings"]["prompts"] == 2 and report["settings"]["steps"] == 1
    assert [e["key"] for e in report["engines"]] == ["ours", "trl"]
    for engine in report["engines"]:
        assert engine["params"] > 0
        (step,) = engine["steps"]
        assert step["rollout_s"] > 0 and step["reward_s"] > 0 and step["step_s"] > 0, engine
        assert step["step_s"] >= step["rollout_s"] + step["reward_s"], engine
        assert 0 < step["generated_tokens"] <= 2 * 2 * 4
        assert engine["median"]["tokens_per_s"] > 0
    # the parameter counts are matched to within a few percent
    ours, trl = (e["params"] for e in report["engines"])
    assert abs(ours - trl) / ours < 0.05
