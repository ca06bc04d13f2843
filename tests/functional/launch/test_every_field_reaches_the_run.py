"""Every field of every recipe reaches the code that acts on it (a setting is used or refused).

The config classes are instrumented so that each attribute read is recorded with the module that made it. Then the
runs a user starts are executed for real on CPU: the tiny SFT and GRPO recipes (through ``run_recipe``, which also
runs the SFT prerequisite), and one paper recipe per task (SFT, GRPO, RLOO) scaled down onto the fixture checkpoint
and Post-Training-format data; the paper recipes' vLLM engine settings are built as the trainer builds them, and
their sbatch scripts are rendered. A field counts as used when code outside generic serialisation and validation
read it. The remaining fields are listed with why validation alone is their use; anything else unread fails.

The other half, "or it is refused", is covered by the validation tests: settings a task does not act on are rejected
naming the field (``tests/unit/launch/test_launch_validation.py::test_unused_settings_are_refused``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from nemotron_plugins.launch import recipe_config as rc
from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.preference.config import PreferenceConfig
from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.runtime import config as runtime_config
from recipes import plugins as recipe_plugins
from tests.run_configs import paper_on_fixture

CONFIG_CLASSES = (
    rc.RecipeConfig,
    rc.ClusterConfig,
    rc.DataConfig,
    rc.SyntheticDataConfig,
    rc.EvalConfig,
    rc.SamplerConfig,
    rc.RewardSpec,
    rc.GenerationConfig,
    GRPOConfig,
    PreferenceConfig,
    runtime_config.ModelConfig,
    runtime_config.ParallelConfig,
    runtime_config.OptimizerConfig,
    runtime_config.CheckpointConfig,
    runtime_config.LoggingConfig,
)

NOT_USE = ("dataclasses.py", "copy.py", "launch/overrides.py", "launch/validation.py", "launch/memory.py")
"""Reads that are not a use: generic serialisation, copies, and the checks themselves (by file)..."""
NOT_USE_FUNCTIONS = frozenset({"validate", "__post_init__", "replace", "__repr__", "__eq__"})
"""... and by function (a config's own field checks)."""

VALIDATION_IS_THE_USE = {
    ("ModelConfig", "hub_id"): "named in the error when model.checkpoint is missing (nothing downloads)",
    ("DataConfig", "hub_id"): "named in the error when data.path is missing (nothing downloads)",
    ("ClusterConfig", "gpu_memory_gb"): "the budget of the pre-launch memory check",
    ("ParallelConfig", "data_parallel_size"): "an explicit DP checked against the world size (DP is derived)",
    ("RecipeConfig", "description"): "the one-line summary `recipes list` prints",
}


def _leaves(obj: object, out: set[tuple[str, str]]) -> set[tuple[str, str]]:
    for f in dataclasses.fields(obj):
        out.add((type(obj).__name__, f.name))
        value = object.__getattribute__(obj, f.name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if dataclasses.is_dataclass(v):
                _leaves(v, out)
    return out


@pytest.fixture
def reads(monkeypatch):
    """Instrument the config classes; yields the set of ``(class, field)`` read by code that acts on them."""
    seen: set[tuple[str, str]] = set()
    names = {c: {f.name for f in dataclasses.fields(c)} for c in CONFIG_CLASSES}

    def make(cls):
        fields = names[cls]

        def getattribute(self, name):
            if name in fields:
                code = sys._getframe(1).f_code
                caller = code.co_filename.replace("\\", "/")
                if not caller.endswith(NOT_USE) and code.co_name not in NOT_USE_FUNCTIONS:
                    seen.add((cls.__name__, name))
            return object.__getattribute__(self, name)

        return getattribute

    for cls in CONFIG_CLASSES:
        monkeypatch.setattr(cls, "__getattribute__", make(cls), raising=False)
    yield seen


def _scaled(name: str, fixture, out: Path):
    """A paper recipe on the fixture, one CPU process, one short step."""
    rl = [
        "generation.max_new_tokens=8",
        "algorithm.num_prompts_per_rollout=2",
        "algorithm.num_generations=2",
        "algorithm.skip_uniform_groups=false",
        "evaluation.num_samples=0",
    ]
    sampler = ["sampler.pass_rate_responses=1"] if build_recipe(name).sampler is not None else []
    return paper_on_fixture(
        name,
        fixture,
        f"output_dir={out / name}",
        "data.max_seq_length=128",
        "data.num_train_samples=8",
        "micro_batch_size=2",
        "global_batch_size=4",
        "train_steps=1",
        *(rl + sampler if build_recipe(name).is_rl else []),
        *(_ONLINE_RPO if _is_online_rpo(name) else []),
    )


_ONLINE_RPO = ["generation.max_new_tokens=8", "preference.num_generations=2", "evaluation.num_samples=0"]


def _is_online_rpo(name: str) -> bool:
    config = build_recipe(name)
    return config.preference is not None and config.preference.mode == "online"


def _run_preference_tasks(fixture, tmp_path: Path) -> None:
    """The preference tasks (issue 18) as a user runs them: a reward model, online RPO scored by it, offline RPO;
    then the paper RPO recipes scaled onto the fixture (online: the fixture's RL rows with their rewards; offline:
    a pairs file)."""
    from nemotron_plugins.launch.dispatch import run_recipe
    from nemotron_plugins.launch.validation import validate_recipe
    from nemotron_plugins.preference.synthetic import write_preference_task

    task = write_preference_task(
        tmp_path / "pref_data", sft_rows=8, train_pairs=16, heldout_pairs=4, train_prompts=8, heldout_prompts=4
    )
    small = ["init_from_recipe=null", "train_steps=1", "micro_batch_size=2", "global_batch_size=4"]
    pairs = [f"data.path={task['pairs_train']}", f"data.eval_path={task['pairs_heldout']}"]
    prompts = [f"data.path={task['prompts_train']}", f"data.eval_path={task['prompts_heldout']}"]
    rm = tmp_path / "pref" / "rm"
    run_recipe(build_recipe("tiny_reward_model_cpu", [*small, *pairs, f"output_dir={rm}", "evaluation.num_samples=4"]))
    reward = (
        f"rewards=[{{'name': 'megatron_reward_model', 'options': {{'checkpoint': '{rm / 'checkpoints'}', "
        "'max_length': 128}}]"
    )
    online = [*small, *prompts, reward, "generation.max_new_tokens=8", "evaluation.num_samples=4"]
    run_recipe(build_recipe("tiny_rpo_online_cpu", [*online, f"output_dir={tmp_path / 'pref' / 'online'}"]))
    offline = [*small, *pairs, "evaluation.num_samples=4", f"output_dir={tmp_path / 'pref' / 'offline'}"]
    run_recipe(build_recipe("tiny_rpo_offline_cpu", offline))
    for name in ("llama_nemotron_super_49b_rpo_64gpu_h100_bf16", "llama_nemotron_nano_8b_rpo_8gpu_h100_bf16"):
        config = _scaled(name, fixture, tmp_path / "paper")
        if config.data.dataset == "preference_pairs":
            config.data.path = task["pairs_train"]
        report = validate_recipe(config)
        assert report.ok, (name, report.errors)
        run_recipe(config)


def test_every_recipe_field_is_read_by_the_run(reads, tmp_path) -> None:
    pytest.importorskip("nemo_run")
    from nemotron_plugins.fixtures import write_fixtures
    from nemotron_plugins.launch.dispatch import run_recipe
    from nemotron_plugins.launch.nemo_run_launch import SlurmOptions, render_sbatch
    from nemotron_plugins.launch.validation import validate_recipe
    from nemotron_plugins.rl.trainer import engine_settings

    torch.set_num_threads(2)
    leaves: set[tuple[str, str]] = set()
    for name in recipe_plugins.BUILTIN_RECIPES:
        _leaves(build_recipe(name), leaves)

    # The tiny recipes as a user runs them: GRPO finds no SFT checkpoint and runs the SFT stage first.
    tiny = tmp_path / "tiny"
    grpo = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            f"output_dir={tiny / 'tiny_puzzle_grpo_cpu'}",
            "train_steps=1",
            "evaluation.num_samples=4",
            "algorithm.skip_uniform_groups=false",  # the update runs even when every group's rewards are equal
        ],
    )
    sft_overrides = ["train_steps=2", "evaluation.num_samples=2", "checkpoint.save_interval=1", "torch_threads=2"]
    import nemotron_plugins.launch.dispatch as dispatch

    original = dispatch.prerequisite

    def small_prerequisite(config):
        stage = original(config)
        if stage is not None:
            for item in sft_overrides:
                from nemotron_plugins.launch.overrides import set_by_path

                key, _, value = item.partition("=")
                set_by_path(stage, key, value)
        return stage

    dispatch.prerequisite = small_prerequisite
    try:
        run_recipe(grpo)
    finally:
        dispatch.prerequisite = original
    run_recipe(build_recipe("tiny_puzzle_grpo_cpu", [f"output_dir={tiny / 'tiny_puzzle_grpo_cpu'}", "train_steps=1"]))
    # ^ a second start finds the checkpoint and resumes (nothing left to train)

    # One paper recipe per task on the fixture (the same trainers and setup the full-scale runs use).
    fixture = write_fixtures(tmp_path / "fixture")
    paper = {
        "sft": "llama_nemotron_ultra_253b_sft_576gpu_h100_bf16",
        "grpo": "llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16",
        "rloo": "llama_nemotron_super_49b_rloo_32gpu_h100_bf16",
    }
    for name in paper.values():
        config = _scaled(name, fixture, tmp_path / "paper")
        report = validate_recipe(config)
        assert report.ok, (name, report.errors)
        run_recipe(config)

    _run_preference_tasks(fixture, tmp_path)

    # What the full-scale runs build but this machine cannot run: the vLLM engine settings, the sbatch scripts.
    options = SlurmOptions(account="acct", partition="batch", job_dir=str(tmp_path / "jobs"))
    for name in recipe_plugins.BUILTIN_RECIPES:
        config = build_recipe(name)
        if config.generation is not None and config.generation.engine == "vllm":
            engine_settings(config)
        render_sbatch(name, config, [], options)

    unread = sorted(leaves - reads - set(VALIDATION_IS_THE_USE))
    assert not unread, f"recipe fields no code acts on: {unread}"
