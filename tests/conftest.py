"""Shared pytest setup: CPU-friendly defaults and clean GPU skips."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Hypothesis profiles. "ci" is deterministic: derandomized (examples derived from each test's source), no example
# database (nothing read from or written to .hypothesis/), a fixed example budget where a test sets none, no
# deadline (shared 2-core runners). "dev" keeps exploring with fresh random examples and the local database.
# CI selects "ci" through the CI environment variable (`.ci/run` exports CI=1, as GitHub Actions and most CI systems
# do); HYPOTHESIS_PROFILE=<name> picks a profile explicitly.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        derandomize=True,
        database=None,
        max_examples=50,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", deadline=None)
    _default_profile = "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))
except ImportError:  # hypothesis is a test extra; tests that use it import it themselves
    pass


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests cleanly where CUDA is absent."""
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
