"""``nemotron-plugins export CHECKPOINT --hf DIR``: write a Hugging Face checkpoint directory.

``CHECKPOINT`` may be:

- a Hugging Face checkpoint directory (``config.json`` + safetensors): re-exported (e.g. a puzzletron-style config
  becomes nemotron-nas with FFNs padded to multiples of 256, an all-standard one plain Llama);
- a training checkpoint of :mod:`nemotron_plugins.training.checkpointing` (a run's checkpoint root: ``config.json``
  and ``tokenizer/`` beside the megatron distributed-checkpoint steps): the model is rebuilt in this process at TP1
  / PP1, the checkpoint resharded into it, and exported;
- a single-rank checkpoint of the SFT or GRPO trainer (the per-rank ``.pt`` format of
  :mod:`nemotron_plugins.runtime.checkpoint`; a root holding ``latest`` or one ``step_XXXXXX``).

What is written: ``config.json`` (plain ``LlamaForCausalLM`` when every block is standard, else ``nemotron-nas``
with ``block_configs``), sharded safetensors with ``model.safetensors.index.json``, the tokenizer files (from
``--tokenizer``, else the checkpoint's own) and ``generation_config.json``. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nemotron_plugins.cli.common import fail

_DTYPES = ("bfloat16", "float16", "float32")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command."""
    parser = subparsers.add_parser("export", help="write a Hugging Face checkpoint from a checkpoint")
    parser.add_argument("checkpoint", help="HF checkpoint dir, training checkpoint dir or SFT checkpoint dir")
    parser.add_argument("--hf", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--dtype", choices=_DTYPES, help="cast the weights (default: keep their dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    parser.add_argument("--step", type=int, help="training / SFT checkpoints: the step to export (default latest)")
    parser.set_defaults(func=run_export)


def detect_checkpoint_kind(path: Path) -> str:
    """``"hf"``, ``"sft"`` or ``"training"`` for a checkpoint directory.

    - ``hf``: ``config.json`` with safetensors weights;
    - ``sft``: the per-rank ``.pt`` format of :mod:`nemotron_plugins.runtime.checkpoint` (a root with ``latest``,
      or a ``step_XXXXXX`` directory with ``rank_00000.pt``) as the single-rank SFT trainer wrote it;
    - ``training``: a run's checkpoint root (``config.json`` + ``tokenizer/`` beside the step directories of
      :mod:`nemotron_plugins.training.checkpointing`), or one of its step directories.

    Raises:
        FileNotFoundError: ``path`` is none of them (the message says what each kind holds).
    """
    from nemotron_plugins.runtime.checkpoint import LATEST_FILE, rank_file_name

    if (path / "config.json").is_file() and (
        (path / "model.safetensors.index.json").is_file() or any(path.glob("*.safetensors"))
    ):
        return "hf"
    latest = path / LATEST_FILE
    if (path / rank_file_name(0)).is_file() or (
        latest.is_file() and (path / latest.read_text(encoding="utf-8").strip() / rank_file_name(0)).is_file()
    ):
        return "sft"
    if (path / "config.json").is_file() or (path.parent / "config.json").is_file():
        return "training"
    raise FileNotFoundError(
        f"{path} is not a checkpoint this command reads: expected a Hugging Face directory (config.json + "
        "*.safetensors), a training checkpoint root (config.json and tokenizer/ beside its step directories) or an "
        "SFT checkpoint (a root with 'latest' or a step_XXXXXX directory with rank_00000.pt)"
    )


def run_export(args: argparse.Namespace) -> int:
    """Export ``args.checkpoint`` to ``args.hf``."""
    import torch

    src, out = Path(args.checkpoint), Path(args.hf)
    if not src.exists():
        fail(f"checkpoint {src} does not exist")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        kind = detect_checkpoint_kind(src)
        if kind == "hf":
            from nemotron_plugins.puzzle.hf_checkpoint import reexport_hf_checkpoint

            reexport_hf_checkpoint(
                src, out, max_shard_size=args.max_shard_size, dtype=dtype, tokenizer_dir=args.tokenizer
            )
        elif kind == "sft":
            _export_sft(src, out, args, dtype)
        else:
            _export_training(src, out, args, dtype)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(f"{type(exc).__name__}: {exc}", code=1)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    summary = {
        "source": str(src),
        "kind": kind,
        "out": str(out),
        "architectures": config.get("architectures"),
        "model_type": config.get("model_type"),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _export_sft(src: Path, out: Path, args: argparse.Namespace, dtype: Any) -> None:
    """A trainer checkpoint in the per-rank format (SFT and GRPO trainers: ``extra.puzzle_config`` + model state):
    its single-rank Megatron state goes through the pure HF mapping. Tokenizer: ``--tokenizer``, else the
    ``tokenizer/`` saved beside the steps (copied verbatim), else the one the checkpoint names."""
    import tempfile

    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict
    from nemotron_plugins.sft.trainer import load_sft_checkpoint

    ckpt = load_sft_checkpoint(src, step=args.step)
    if ckpt.world_size != 1:
        raise ValueError(
            f"{ckpt.path} was written by {ckpt.world_size} ranks; only single-rank SFT checkpoints export here"
        )
    saved = ckpt.path.parent / "tokenizer"  # the trainers save the run's tokenizer files beside the steps
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = args.tokenizer or (str(saved) if saved.is_dir() else None)
        if tokenizer_dir is None:
            ckpt.tokenizer.save_pretrained(tmp)
            tokenizer_dir = tmp
        export_hf_state_dict(
            ckpt.model_state,
            ckpt.model_config,
            out,
            layout="megatron",
            max_shard_size=args.max_shard_size,
            dtype=dtype,
            tokenizer_dir=tokenizer_dir,
        )


def _export_training(src: Path, out: Path, args: argparse.Namespace, dtype: Any) -> None:
    """A distributed training checkpoint: rebuild the model here at TP1 / PP1, load it (resharding), export.

    The architecture and tokenizer are the ``config.json`` and ``tokenizer/`` the trainers write beside the steps
    (:func:`nemotron_plugins.training.setup.write_checkpoint_metadata`); ``src`` is that root or one step directory.
    """
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import ensure_distributed
    from nemotron_plugins.training.checkpointing import load_checkpoint

    root = src if (src / "config.json").is_file() else src.parent  # a step directory: its run's root
    cfg = load_hf_config(root / "config.json")
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else root / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"{root}: no tokenizer/ directory beside the checkpoint; pass --tokenizer DIR")
    with ensure_distributed(ParallelConfig()):
        model = build_puzzle_model(cfg, device="cpu", perform_initialization=False)
        load_checkpoint(src, model=[model], step=args.step, load_rng=False)
        export_hf_checkpoint(
            model,
            cfg,
            out,
            dtype=dtype,
            max_shard_size=args.max_shard_size,
            tokenizer_dir=tokenizer_dir,
            progress=False,
        )
