"""``nemotron-plugins export CHECKPOINT --hf DIR``: write a Hugging Face checkpoint directory.

``CHECKPOINT`` may be:

- a Hugging Face checkpoint directory (``config.json`` + safetensors): re-exported (e.g. a puzzletron-style config
  becomes nemotron-nas with FFNs padded to multiples of 256, an all-standard one plain Llama);
- a training checkpoint of :mod:`nemotron_plugins.training.checkpointing` (megatron distributed checkpoint): the
  model is rebuilt in this process at TP1 / PP1, the checkpoint resharded into it, and exported;
- a checkpoint of the single-rank SFT trainer (``run_sft``; a root holding ``latest`` or one ``step_XXXXXX``).

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
    """``"hf"``, ``"training"`` or ``"sft"`` for a checkpoint directory.

    Raises:
        FileNotFoundError: ``path`` is none of them (the message says what each kind holds).
    """
    if (path / "config.json").is_file() and (
        (path / "model.safetensors.index.json").is_file() or any(path.glob("*.safetensors"))
    ):
        return "hf"
    training = _training_checkpointing()
    if training is not None and _is_training_checkpoint(training, path):
        return "training"
    if (path / "latest").exists() or (path / "meta.json").is_file() or any(path.glob("step_*")):
        return "sft"
    raise FileNotFoundError(
        f"{path} is not a checkpoint this command reads: expected a Hugging Face directory (config.json + "
        "*.safetensors), a training checkpoint (nemotron_plugins.training.checkpointing) or an SFT checkpoint "
        "(a root with 'latest' or a step_XXXXXX directory)"
    )


def _training_checkpointing() -> Any:
    try:
        from nemotron_plugins.training import checkpointing
    except ImportError:
        return None
    return checkpointing


def _is_training_checkpoint(module: Any, path: Path) -> bool:
    probe = getattr(module, "is_checkpoint", None)
    return bool(probe(path)) if callable(probe) else False


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
    """An SFT-trainer checkpoint: its single-rank Megatron state goes through the pure HF mapping."""
    import tempfile

    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_state_dict
    from nemotron_plugins.sft.trainer import load_sft_checkpoint

    ckpt = load_sft_checkpoint(src, step=args.step)
    if ckpt.world_size != 1:
        raise ValueError(
            f"{ckpt.path} was written by {ckpt.world_size} ranks; only single-rank SFT checkpoints export here"
        )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = args.tokenizer
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
    """A distributed training checkpoint: rebuild at TP1 / PP1 here, load (resharding), export."""
    from nemotron_plugins.training import checkpointing

    export = getattr(checkpointing, "export_to_hf", None)
    if export is None:
        raise RuntimeError(
            "nemotron_plugins.training.checkpointing has no export_to_hf(src, out, ...) yet; export the model "
            "in memory with nemotron_plugins.puzzle.hf_checkpoint.export_hf_checkpoint"
        )
    export(src, out, step=args.step, dtype=dtype, max_shard_size=args.max_shard_size, tokenizer_dir=args.tokenizer)
