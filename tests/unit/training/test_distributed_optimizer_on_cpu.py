"""The CPU adapter's stand-in for megatron's DistributedOptimizer constructor (nemotron_plugins.runtime.cpu)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core")

from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer  # noqa: E402

from nemotron_plugins.runtime import cpu  # noqa: E402


def test_constructor_sees_cuda_type_names_only_while_the_adapter_is_on() -> None:
    original = DistributedOptimizer.__dict__["__init__"]
    seen: list[str] = []

    def probe(self: object, *args: object, **kwargs: object) -> None:
        seen.extend(t.type() for t in args)

    DistributedOptimizer.__init__ = probe  # what the adapter wraps: the constructor as megatron defines it
    try:
        with cpu.cpu_adapter(force=True):
            wrapped = DistributedOptimizer.__init__
            DistributedOptimizer.__new__(DistributedOptimizer).__init__(
                torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.float16)
            )
            assert torch.zeros(1).type() == "torch.FloatTensor"  # outside the constructor nothing changes
        assert DistributedOptimizer.__init__ is probe  # deactivate restores the constructor
    finally:
        DistributedOptimizer.__init__ = original
    assert wrapped is not probe
    assert seen == ["torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor", "torch.cuda.HalfTensor"]


def test_type_names_mode_leaves_conversions_and_other_devices_alone() -> None:
    with cpu._CudaTypeNamesMode():
        assert torch.ones(2).type() == "torch.cuda.FloatTensor"
        converted = torch.ones(2).type(torch.float64)
        assert converted.dtype == torch.float64 and converted.device.type == "cpu"
        assert torch.ones(2, dtype=torch.int64).type() == "torch.cuda.LongTensor"
        assert torch.empty(2, device="meta").type() == "torch.meta.FloatTensor"
    assert torch.ones(2).type() == "torch.FloatTensor"
