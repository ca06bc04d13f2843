"""``nemotron-plugins export`` of a distributed training checkpoint saved at TP2: resharded to TP1 and exported.

Two gloo processes load a tiny heterogeneous HF checkpoint (every block kind) at TP2 and save it with
``training.checkpointing.save_checkpoint`` (plus the ``config.json`` / ``tokenizer/`` the trainers write beside it);
the export command, in a fresh process at TP1, must give back the source tensors bit for bit (FFN widths 96 / 64 /
32 come back zero-padded to 256 for DeciLM readers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.runtime.distributed import run_local_processes
from tests.reference.tiny_checkpoints import tensor_hashes

pytest.importorskip("transformers")


def _save_at_tp2(rank: int, src: str, root: str) -> None:
    from nemotron_plugins.chat.tokenizer import load_tokenizer
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import load_hf_checkpoint
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed
    from nemotron_plugins.training.checkpointing import save_checkpoint
    from nemotron_plugins.training.setup import write_checkpoint_metadata

    init_distributed(ParallelConfig(tensor_model_parallel_size=2), seed=1)
    cfg = load_hf_config(src)
    model = build_puzzle_model(cfg, device="cpu", perform_initialization=False)  # fp32 parameters
    load_hf_checkpoint(model, src, cfg, progress=False)
    save_checkpoint(root, 3, model=[model])
    if rank == 0:
        write_checkpoint_metadata(root, cfg, load_tokenizer(src))


def test_tp2_training_checkpoint_exports_at_tp1_bitwise(tmp_path: Path) -> None:
    pytest.importorskip("nemotron_plugins.training.checkpointing")
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from tests.reference.tiny_checkpoints import random_hf_weights, tiny_heterogeneous_config, write_hf_checkpoint

    cfg = tiny_heterogeneous_config(vocab_size=106)
    weights = random_hf_weights(cfg, seed=2)
    src = write_hf_checkpoint(tmp_path / "src", cfg, weights)
    build_tiny_tokenizer().save_pretrained(str(src))
    root = tmp_path / "run" / "checkpoints"
    run_local_processes(_save_at_tp2, 2, args=(str(src), str(root)), timeout_s=300)

    out = tmp_path / "hf"
    cmd = [sys.executable, "-m", "nemotron_plugins.cli.main", "export", str(root), "--hf", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["kind"] == "training"
    exported = read_hf_state_dict(out)
    cut = {n: exported[n][tuple(slice(0, d) for d in w.shape)].contiguous() for n, w in weights.items()}
    assert tensor_hashes(cut) == tensor_hashes(weights)
    assert sum(int(t.count_nonzero()) for t in exported.values()) == sum(int(t.count_nonzero()) for t in cut.values())
    assert json.loads((out / "config.json").read_text())["model_type"] == "nemotron-nas"
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert len(tok) == 106 and (out / "generation_config.json").is_file()
