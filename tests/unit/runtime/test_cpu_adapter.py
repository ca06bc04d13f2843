"""The megatron-core CPU adapter: device rewriting, torch.cuda / megatron stand-ins, reversibility."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.runtime import cpu


@pytest.fixture(autouse=True)
def _clean_adapter(monkeypatch: pytest.MonkeyPatch):
    """Each test sees a CPU-only machine (CUDA hidden, also on GPU machines) and leaves no adapter behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
    while cpu.is_cpu_adapter_active():
        cpu.deactivate()


def test_activate_is_idempotent_explicit_and_reversible(caplog: pytest.LogCaptureFixture) -> None:
    original_current_device = torch.cuda.current_device
    modes_before = len(torch.overrides._get_current_function_mode_stack())
    with caplog.at_level("INFO", logger="nemotron_plugins.runtime.cpu"):
        assert cpu.activate() is True
    assert "CPU adapter active" in caplog.text
    assert cpu.is_cpu_adapter_active()
    assert cpu.activate() is True  # second call: no second mode
    assert len(torch.overrides._get_current_function_mode_stack()) == modes_before + 1
    assert torch.cuda.current_device() == torch.device("cpu")
    assert cpu.deactivate() is True
    assert not cpu.is_cpu_adapter_active()
    assert torch.cuda.current_device is original_current_device
    assert len(torch.overrides._get_current_function_mode_stack()) == modes_before
    assert cpu.deactivate() is False
    # Plain torch again: a CUDA device argument allocates on the real GPU where there is one (the fixture hides
    # only is_available; device_count is the real one), else it fails as CPU-only torch does.
    if torch.cuda.device_count():
        assert torch.zeros(1, device="cuda").device.type == "cuda"
    else:
        with pytest.raises((RuntimeError, AssertionError)):
            torch.zeros(1, device="cuda")


def test_cuda_device_arguments_run_on_cpu() -> None:
    with cpu.cpu_adapter() as active:
        assert active
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.empty(2, device=0).device.type == "cpu"
        assert torch.ones(2, device=torch.device("cuda", 0)).device.type == "cpu"
        assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
        t = torch.arange(3.0)
        assert t.cuda() is t
        assert t.to("cuda").device.type == "cpu"
        assert t.to("cuda:0", torch.float64).dtype == torch.float64
        assert t.to(device="cuda").device.type == "cpu"
        assert t.new_zeros(2, device="cuda").device.type == "cpu"
        assert torch.empty(2, pin_memory=True).device.type == "cpu"
        assert t.pin_memory() is t
        assert torch.zeros(2, device="meta").device.type == "meta"  # other devices pass through
        torch.cuda.synchronize()
        stream = torch.cuda.current_stream()
        with torch.cuda.stream(torch.cuda.Stream()):
            stream.wait_stream(torch.cuda.default_stream())
        event = torch.cuda.Event()
        event.record()
        assert event.query()
    assert not cpu.is_cpu_adapter_active()


def test_context_manager_keeps_an_adapter_it_did_not_start() -> None:
    cpu.activate()
    with cpu.cpu_adapter():
        pass
    assert cpu.is_cpu_adapter_active()


def test_cuda_rng_functions_drive_the_cpu_generator() -> None:
    with cpu.cpu_adapter():
        torch.cuda.manual_seed(123)
        state = torch.cuda.get_rng_state()
        first = torch.rand(4)
        torch.cuda.set_rng_state(state)
        assert torch.equal(torch.rand(4), first)
        torch.manual_seed(123)
        assert torch.equal(torch.rand(4), first)


def test_megatron_rng_tracker_forks_the_cpu_generator() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    with cpu.cpu_adapter():
        tracker = mrandom.CudaRNGStatesTracker()
        tracker.add("model-parallel-rng", 99)
        torch.manual_seed(0)
        before = torch.get_rng_state()
        with tracker.fork("model-parallel-rng"):
            forked = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), before)  # outside state restored
        torch.manual_seed(99)
        assert torch.equal(torch.rand(3), forked)  # the fork drew from the tracker's seed
        with tracker.fork("model-parallel-rng"):
            assert not torch.equal(torch.rand(3), forked)  # and its state advanced


def test_megatron_grad_clipping_accepts_cpu_grads() -> None:
    from megatron.core.optimizer import clip_grads

    original = clip_grads.clip_grad_by_total_norm_fp32
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 2.0)
    with cpu.cpu_adapter():
        clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
        torch.testing.assert_close(p.grad, torch.full((4,), 0.5), rtol=1e-5, atol=0)
        clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=10.0, total_norm=1.0)  # no clipping needed
        torch.testing.assert_close(p.grad, torch.full((4,), 0.5), rtol=1e-5, atol=0)
    assert clip_grads.clip_grad_by_total_norm_fp32 is original


def test_no_op_when_cuda_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu.activate() is False
    assert not cpu.is_cpu_adapter_active()
    assert cpu.activate(force=True) is True
    cpu.deactivate()


def test_deactivate_refuses_when_another_mode_is_on_top() -> None:
    cpu.activate()
    other = torch.overrides.TorchFunctionMode()
    with other:
        with pytest.raises(RuntimeError, match="not the innermost"):
            cpu.deactivate()
    assert cpu.deactivate() is True
