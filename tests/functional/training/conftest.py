"""The training-stack tests check the CPU / gloo path: their spawned workers see no GPU, also on a GPU machine
(``CUDA_VISIBLE_DEVICES`` is inherited by the children; hiding ``is_available`` here would not reach them)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cpu_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
