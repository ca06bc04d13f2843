"""Which replica a rank generates as: the training DP replicas for the megatron engine, the engine's own layout (TP
groups of consecutive ranks, generation DP = world / TP) for vLLM."""

from __future__ import annotations

from types import SimpleNamespace

from nemotron_plugins.rl.engines.vllm_engine import VLLMLayout
from nemotron_plugins.rl.generation import GenerationLayout


def test_an_engine_with_its_own_layout_sets_the_generation_replicas(monkeypatch) -> None:
    made: list[int] = []
    monkeypatch.setattr(VLLMLayout, "peer_group", lambda self: made.append(self.rank) or f"peers-of-{self.tp_rank}")
    # World 4, generation TP 2: ranks 2 and 3 form engine 1; training DP does not enter.
    for rank, engine_index in [(0, 0), (1, 0), (2, 1), (3, 1)]:
        engine = SimpleNamespace(layout=VLLMLayout(world_size=4, rank=rank, tp_size=2))
        layout = GenerationLayout.of_engine(engine)
        assert (layout.dp_size, layout.dp_rank) == (2, engine_index)
        assert layout.group == f"peers-of-{rank % 2}"
    assert made == [0, 1, 2, 3]  # the peer groups are made on every rank (a collective)


def test_an_engine_without_a_layout_generates_as_the_training_replicas() -> None:
    layout = GenerationLayout.of_engine(SimpleNamespace())
    assert (layout.dp_size, layout.dp_rank, layout.group) == (1, 0, None)
