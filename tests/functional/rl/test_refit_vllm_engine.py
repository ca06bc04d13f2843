"""The ``vllm`` engine's refit and generation layout across gloo processes, on the recording vLLM stand-in.

Training runs at TP2 x PP2 on 4 ranks (training DP 1); generation at TP2, so vLLM's external data parallelism gives
two independent engines (generation DP 2). Each rank builds its engine, refits it from its own Megatron shards
(``update_weights(model=...)``, the trainer's call) and generates its engine's share of the prompts. Checked:

- every rank's engine received every tensor of the exported checkpoint (both pipeline stages'), equal to the source
  weights (FFN widths zero-padded as the export pads them), in buckets bounded by the bucket size;
- the TP slices the two ranks of an engine keep (vLLM's weight loaders take full tensors and keep their slice,
  emulated here with vLLM's rank order) reassemble the full tensors, and the engine's layout is vLLM's;
- both ranks of an engine submit the same prompts, the two engines disjoint halves covering all prompts;
- ``vllm.LLM`` is built SPMD with the external launcher at the generation TP, prefix caching on.

Not run: vLLM itself (see ``tests/functional/rl/refit_fake_vllm.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from refit_fake_vllm import tp_dim
from refit_worker import engine_worker

from nemotron_plugins.runtime.distributed import run_local_processes
from tests.reference.tiny_checkpoints import random_hf_weights, tiny_heterogeneous_config, write_hf_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

BUCKET_BYTES = 8 << 10


def test_every_stage_reaches_every_engine_at_a_generation_layout_of_its_own(tmp_path: Path) -> None:
    cfg = tiny_heterogeneous_config()
    weights = random_hf_weights(cfg, seed=11)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights, shards=2)
    per_rank = run_local_processes(engine_worker, 4, args=(2, 2, 2, str(src), BUCKET_BYTES), timeout_s=600)

    for rank, result in enumerate(per_rank):
        assert result["layout"] == (rank % 2, rank // 2, 2) and result["layout"][:2] == result["vllm_view"]
        assert result["peers"] == [rank % 2, rank % 2 + 2]  # the same TP position in each engine
        kwargs = result["kwargs"]
        assert kwargs["distributed_executor_backend"] == "external_launcher"
        assert kwargs["tensor_parallel_size"] == 2 and kwargs["enable_prefix_caching"] is True
        full = result["full"]
        assert set(full) == set(weights)  # both stages' tensors, nothing else
        for name, src_tensor in weights.items():
            got = full[name].float()
            cut = got[tuple(slice(0, n) for n in src_tensor.shape)]
            assert torch.equal(cut, src_tensor.bfloat16().float()), name
            assert int(torch.count_nonzero(got)) == int(torch.count_nonzero(cut)), f"{name}: padding is not zero"
        tensors, buckets, largest = result["report"]
        assert tensors == len(weights) and buckets == len(result["bucket_bytes"]) > 3
        assert largest == max(result["bucket_bytes"]) <= max(BUCKET_BYTES, 2 * 256 * 32 * 2)
        assert result["events"].count("generate") == 1 and result["groups"] == len(result["generated_prompts"])

    for engine in (0, 1):
        a, b = per_rank[2 * engine], per_rank[2 * engine + 1]
        assert a["generated_prompts"] == b["generated_prompts"]  # SPMD: one engine, the same requests
        for name, tensor in a["full"].items():
            parts = [a["shard"][name], b["shard"][name]]
            dim = tp_dim(name)
            whole = parts[0] if dim is None else torch.cat(parts, dim=dim)
            assert torch.equal(whole, tensor), name
    prompts = per_rank[0]["generated_prompts"] + per_rank[2]["generated_prompts"]
    assert prompts == [[10 + i, 11 + i, 12 + i] for i in range(5)]
