"""Atomic training-state checkpoints: crash safety, exact resume, retention, multi-rank shards."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nemotron_plugins.runtime import checkpoint as ckpt
from nemotron_plugins.runtime.checkpoint import (
    CheckpointError,
    CheckpointManager,
    get_rng_state,
    latest_step,
    list_checkpoints,
    load_training_state,
    save_training_state,
    set_rng_state,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------------------
# A tiny training loop whose losses depend on every piece of state: weights, AdamW moments, dropout RNG (torch),
# data order (numpy, kept in the sampler state) and a python-random noise term.
# ----------------------------------------------------------------------------------------------------------------


class _Sampler:
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        return np.random.default_rng(self.seed + self.epoch).permutation(self.n).tolist()

    def next_batch(self, size: int) -> list[int]:
        out = []
        for _ in range(size):
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._make_order()


def _build(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    gen = torch.Generator().manual_seed(1234)
    data_x = torch.randn(20, 6, generator=gen)
    data_y = torch.randn(20, 1, generator=gen)
    return model, opt, sched, _Sampler(20, seed=7), (data_x, data_y)


def _train_step(model, opt, sched, sampler, data) -> float:
    idx = sampler.next_batch(4)
    x, y = data[0][idx], data[1][idx]
    noise = random.random() * 1e-3 + float(np.random.rand()) * 1e-3
    loss = ((model(x) - y) ** 2).mean() + noise
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.item())


def _state(model, opt, sched, sampler) -> dict:
    return {
        "model_state": model.state_dict(),
        "optimizer_state": opt.state_dict(),
        "scheduler_state": sched.state_dict(),
        "sampler_state": sampler.state_dict(),
    }


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _uninterrupted(n_steps: int) -> list[float]:
    _seed_all(0)
    parts = _build(0)
    return [_train_step(*parts) for _ in range(n_steps)]


def test_kill_and_resume_gives_identical_losses(tmp_path: Path) -> None:
    reference = _uninterrupted(10)

    _seed_all(0)
    model, opt, sched, sampler, data = _build(0)
    losses = [_train_step(model, opt, sched, sampler, data) for _ in range(4)]
    save_training_state(tmp_path, step=4, extra={"note": "mid-run"}, **_state(model, opt, sched, sampler))
    del model, opt, sched, sampler  # "kill": nothing survives except the files

    _seed_all(999)  # a fresh process would start from other RNG states
    model, opt, sched, sampler, data = _build(555)  # and other initial weights
    state = load_training_state(tmp_path)
    assert state.step == 4 and state.extra == {"note": "mid-run"}
    model.load_state_dict(state.model_state)
    opt.load_state_dict(state.optimizer_state)
    sched.load_state_dict(state.scheduler_state)
    sampler.load_state_dict(state.sampler_state)
    losses += [_train_step(model, opt, sched, sampler, data) for _ in range(6)]

    assert losses == reference  # exact equality, not approximate


def test_resume_without_rng_restore_differs(tmp_path: Path) -> None:
    """The RNG restore is what makes resume exact: without it the dropout masks differ."""
    reference = _uninterrupted(6)
    _seed_all(0)
    model, opt, sched, sampler, data = _build(0)
    losses = [_train_step(model, opt, sched, sampler, data) for _ in range(3)]
    save_training_state(tmp_path, step=3, **_state(model, opt, sched, sampler))
    _seed_all(999)
    model, opt, sched, sampler, data = _build(555)
    state = load_training_state(tmp_path, restore_rng=False)
    model.load_state_dict(state.model_state)
    opt.load_state_dict(state.optimizer_state)
    sched.load_state_dict(state.scheduler_state)
    sampler.load_state_dict(state.sampler_state)
    losses += [_train_step(model, opt, sched, sampler, data) for _ in range(3)]
    assert losses[:3] == reference[:3]
    assert losses[3:] != reference[3:]


_CHILD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests_dir!r})
    import torch
    torch.set_num_threads(1)
    from nemotron_plugins.runtime import checkpoint as ckpt
    import test_checkpoint as t

    root = sys.argv[1]
    t._seed_all(0)
    model, opt, sched, sampler, data = t._build(0)
    real_save = torch.save
    for step in range(1, 8):
        t._train_step(model, opt, sched, sampler, data)
        if step == 6:
            def dying_save(obj, path, *a, **k):
                real_save(obj, path, *a, **k)
                os._exit(17)  # killed after writing its shard, before the commit
            torch.save = dying_save
        ckpt.save_training_state(root, step=step, keep_last=2, **t._state(model, opt, sched, sampler))
    """
)


def test_process_killed_mid_save_then_resumed(tmp_path: Path) -> None:
    """A real process dies inside save #6: checkpoint 5 stays the latest and resuming from it is exact."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    root = tmp_path / "ckpts"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    assert latest_step(root) == 5
    assert list_checkpoints(root) == [4, 5]
    assert (root / ".tmp_step_000006").is_dir()  # the half-written save is left hidden, never read

    reference = _uninterrupted(9)
    _seed_all(3)
    model, opt, sched, sampler, data = _build(3)
    state = load_training_state(root)
    model.load_state_dict(state.model_state)
    opt.load_state_dict(state.optimizer_state)
    sched.load_state_dict(state.scheduler_state)
    sampler.load_state_dict(state.sampler_state)
    resumed = [_train_step(model, opt, sched, sampler, data) for _ in range(4)]
    assert resumed == reference[5:9]

    save_training_state(root, step=6, keep_last=2, **_state(model, opt, sched, sampler))
    assert not (root / ".tmp_step_000006").exists()  # the next save clears the leftovers


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while serialising")


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path: Path) -> None:
    save_training_state(tmp_path, step=1, model_state={"w": torch.ones(3)})
    before = sorted(p.name for p in tmp_path.iterdir())
    latest_before = (tmp_path / "latest").read_text()

    with pytest.raises(RuntimeError, match="boom while serialising"):
        save_training_state(tmp_path, step=2, model_state={"w": torch.zeros(3)}, extra={"bad": _Unpicklable()})

    assert (tmp_path / "latest").read_text() == latest_before
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # temp dir cleaned, nothing new visible
    state = load_training_state(tmp_path)
    assert state.step == 1 and torch.equal(state.model_state["w"], torch.ones(3))


def test_crash_during_commit_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_training_state(tmp_path, step=1, model_state={"w": torch.ones(3)})

    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "step_000002":
            raise OSError("simulated crash at rename")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash at rename"):
        save_training_state(tmp_path, step=2, model_state={"w": torch.zeros(3)})
    monkeypatch.undo()

    assert latest_step(tmp_path) == 1
    assert list_checkpoints(tmp_path) == [1]
    assert torch.equal(load_training_state(tmp_path).model_state["w"], torch.ones(3))


def test_resave_same_step_replaces_it(tmp_path: Path) -> None:
    save_training_state(tmp_path, step=3, model_state={"w": torch.ones(2)})
    save_training_state(tmp_path, step=3, model_state={"w": torch.full((2,), 2.0)})
    assert list_checkpoints(tmp_path) == [3]
    assert torch.equal(load_training_state(tmp_path).model_state["w"], torch.full((2,), 2.0))


def test_keep_last_pruning_and_manager(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for step in (10, 20, 30, 40):
        mgr.save(step, model_state={"step": torch.tensor(step)})
    assert mgr.steps() == [30, 40]
    assert mgr.latest() == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000030", "step_000040"]
    assert int(mgr.load().model_state["step"]) == 40
    assert int(mgr.load(step=30).model_state["step"]) == 30
    meta = json.loads((tmp_path / "step_000040" / "meta.json").read_text())
    assert meta["step"] == 40 and meta["world_size"] == 1 and meta["files"] == ["rank_00000.pt"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        load_training_state(tmp_path)
    save_training_state(tmp_path, step=5)
    with pytest.raises(CheckpointError, match="step_000007"):
        load_training_state(tmp_path, step=7)
    (tmp_path / "latest").write_text("garbage\n")
    with pytest.raises(CheckpointError, match="expected a name like"):
        load_training_state(tmp_path)
    # A step directory can be loaded directly.
    assert load_training_state(tmp_path / "step_000005").step == 5


def test_rng_state_round_trip() -> None:
    _seed_all(11)
    state = get_rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    _seed_all(12)
    set_rng_state(state)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _dist_worker(rank: int, world: int, init_file: str, root: str, q) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)
        shard = {"w": torch.full((2,), float(rank))}
        save_training_state(root, step=1, model_state=shard, optimizer_state={"r": rank}, keep_last=1)
        expected_next = torch.rand(2)  # drawn right after the save
        torch.manual_seed(0)
        state = load_training_state(root)
        after_restore = torch.rand(2)
        same = torch.equal(expected_next, after_restore)
        q.put((rank, float(state.model_state["w"][0]), state.optimizer_state["r"], same))
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_their_own_shards(tmp_path: Path) -> None:
    """Plain gloo processes (the checkpoint needs no megatron; run_local_processes would import it, ~10 s)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    root = tmp_path / "ckpt"
    args = (2, str(tmp_path / "init"), str(root), q)
    procs = [ctx.Process(target=_dist_worker, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = sorted(q.get(timeout=5) for _ in range(2))
    assert results == [(0, 0.0, 0, True), (1, 1.0, 1, True)]
    assert sorted(p.name for p in (root / "step_000001").iterdir()) == ["meta.json", "rank_00000.pt", "rank_00001.pt"]
    # A single-process run cannot silently load a 2-rank checkpoint.
    with pytest.raises(CheckpointError, match="written by 2 ranks"):
        load_training_state(root)
