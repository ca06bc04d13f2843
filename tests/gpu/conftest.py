"""Shared fixtures of the GPU suite."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def dist():
    """A one-process megatron context on CUDA for the module's tests."""
    from nemotron_plugins.runtime.distributed import distributed_context

    assert torch.cuda.is_available()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context(seed=1) as ctx:
            yield ctx
