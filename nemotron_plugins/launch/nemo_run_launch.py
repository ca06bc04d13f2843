"""Launch recipes through NeMo-Run: ``LocalExecutor`` here, ``SlurmExecutor`` (torchrun + pyxis) on a cluster.

Every rank runs ``python -m nemotron_plugins.cli.main train RECIPE <overrides>``: the recipe is rebuilt on the
cluster from its name, the user's overrides and the resolved cluster / parallelism values pinned as overrides, so
the command line shows (and fixes) TP, PP, CP and the node count.

NeMo-Run is imported inside the functions (optional dependency: ``pip install nemotron-plugins[nemo]``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_plugins.launch.recipe_config import RecipeConfig

TRAIN_MODULE = "nemotron_plugins.cli.main"
DRYRUN_EXPERIMENT_SUFFIX = "dryrun"


@dataclass(kw_only=True, slots=True)
class SlurmOptions:
    """Cluster settings for :func:`slurm_executor` (everything the recipe does not decide)."""

    account: str = "ACCOUNT"
    """Slurm account (``--account``)."""
    partition: str | None = None
    """Slurm partition."""
    time: str | None = None
    """Wall-clock limit; ``None`` uses the recipe's ``cluster.time_limit``."""
    job_dir: str = "nemo_run_jobs"
    """Directory on the cluster's shared filesystem for job scripts and logs (made absolute)."""
    container_image: str | None = None
    """Container image; ``None`` uses the recipe's ``cluster.container_image``."""
    container_mounts: list[str] = field(default_factory=list)
    """Extra pyxis mounts ``src:dst`` (added to the recipe's)."""
    ssh_host: str | None = None
    """Submit through SSH to this login node; ``None`` submits from this machine (it must have ``sbatch``)."""
    ssh_user: str | None = None
    """SSH user for ``ssh_host``."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables exported in the sbatch script."""
    packager: str = "git"
    """How code reaches the cluster: ``git`` (archive of the git HEAD into the job dir) or ``none`` (installed in
    the container)."""


def pinned_overrides(config: RecipeConfig) -> list[str]:
    """The resolved cluster and parallel sizes as overrides, so every rank builds exactly this layout."""
    p = config.parallel
    pins = [
        f"cluster.nodes={config.cluster.nodes}",
        f"cluster.devices_per_node={config.cluster.devices_per_node}",
        f"parallel.tensor_model_parallel_size={p.tensor_model_parallel_size}",
        f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size}",
        f"parallel.context_parallel_size={p.context_parallel_size}",
        f"parallel.sequence_parallel={str(p.sequence_parallel).lower()}",
    ]
    if config.generation is not None:
        pins.append(f"generation.tensor_model_parallel_size={config.generation.tensor_model_parallel_size}")
    return pins


def train_args(recipe: str, config: RecipeConfig, overrides: Sequence[str]) -> list[str]:
    """Arguments after ``python -m nemotron_plugins.cli.main``: ``train RECIPE <user overrides> <pins>``.

    Args:
        recipe: Registered recipe name.
        config: The resolved config (for the pinned sizes).
        overrides: The user's overrides; those of pinned keys are replaced by the pins. NeMo-Run quotes each
            argument itself when it writes the sbatch script.
    """
    pins = pinned_overrides(config)
    pinned_keys = {pin.split("=", 1)[0] for pin in pins}
    user = [o for o in overrides if o.split("=", 1)[0].strip() not in pinned_keys]
    return ["train", recipe, *user, *pins]


def _script(args: list[str]) -> Any:
    import nemo_run as run

    return run.Script(path=TRAIN_MODULE, m=True, entrypoint="python", args=args)


def _rdzv_id(name: str) -> int:
    return zlib.crc32(name.encode()) % 10000 + 1


def slurm_executor(config: RecipeConfig, options: SlurmOptions, *, dry_run: bool = False) -> Any:
    """A NeMo-Run ``SlurmExecutor``: one task per node running torchrun over ``devices_per_node`` GPUs, c10d
    rendezvous on the head node, pyxis container image and mounts, env vars exported in the script."""
    import nemo_run as run

    cluster = config.cluster
    if options.ssh_host:
        tunnel = run.SSHTunnel(
            host=options.ssh_host, user=options.ssh_user or os.environ.get("USER", ""), job_dir=options.job_dir
        )
    else:
        tunnel = run.LocalTunnel(job_dir=os.path.abspath(options.job_dir))
    if dry_run or options.packager == "none":
        packager = run.Packager()
    elif options.packager == "git":
        packager = run.GitArchivePackager()
    else:
        raise ValueError(f"packager must be 'git' or 'none', got {options.packager!r}")
    env = (
        {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1"}
        if cluster.device == "cuda"
        else {}
    )
    env.update(options.env)
    image = options.container_image or cluster.container_image
    return run.SlurmExecutor(
        account=options.account,
        partition=options.partition,
        job_name_prefix="nemotron-",
        time=options.time or cluster.time_limit,
        nodes=cluster.nodes,
        ntasks_per_node=cluster.devices_per_node,
        gpus_per_node=cluster.devices_per_node if cluster.device == "cuda" else None,
        exclusive=True,
        container_image=image,
        container_mounts=[*cluster.container_mounts, *options.container_mounts] if image else [],
        env_vars=env,
        tunnel=tunnel,
        packager=packager,
        launcher=run.Torchrun(rdzv_backend="c10d", rdzv_port=29500, rdzv_id=_rdzv_id(config.name)),
        poll_estimated_start_time=False,
    )


@contextlib.contextmanager
def _stdin(stream: Any) -> Any:
    # NeMo-Run's packaging step runs shell commands through invoke, which forwards our stdin; give it an empty one.
    previous = sys.stdin
    sys.stdin = stream
    try:
        yield
    finally:
        sys.stdin = previous


def render_sbatch(recipe: str, config: RecipeConfig, overrides: Sequence[str], options: SlurmOptions) -> str:
    """The exact sbatch script NeMo-Run would submit for this recipe, rendered by NeMo-Run's own dry run.

    Nothing is submitted and nothing is left behind: the experiment directory lives in a temporary directory.
    """
    import nemo_run as run

    executor = slurm_executor(config, options, dry_run=True)
    with (
        tempfile.TemporaryDirectory(prefix="nemotron-dryrun-") as base,
        contextlib.redirect_stdout(sys.stderr),
        open(os.devnull, encoding="utf-8") as no_input,
        _stdin(no_input),
    ):
        exp_id = f"{config.name}_{DRYRUN_EXPERIMENT_SUFFIX}"
        with run.Experiment(config.name, executor=executor, id=exp_id, base_dir=base, clean_mode=True) as exp:
            exp.add(_script(train_args(recipe, config, overrides)), name=config.name, tail_logs=False)
            exp.dryrun(log=False, delete_exp_dir=False)
            scripts = sorted(Path(base).rglob("*_sbatch.sh"))
            if not scripts:
                raise RuntimeError("NeMo-Run's dry run wrote no sbatch script")
            text = scripts[0].read_text(encoding="utf-8")
            exp._launched = True  # nothing to wait for on exit
    return text


def submit_slurm(
    recipe: str, config: RecipeConfig, overrides: Sequence[str], options: SlurmOptions, *, detach: bool = True
) -> str:
    """Submit through NeMo-Run's Slurm executor; returns the experiment id."""
    import nemo_run as run

    executor = slurm_executor(config, options)
    with run.Experiment(config.name, executor=executor) as exp:
        exp.add(_script(train_args(recipe, config, overrides)), name=config.name, tail_logs=False)
        exp.run(detach=detach)
        return exp._id


def local_executor(config: RecipeConfig, env: dict[str, str] | None = None) -> Any:
    """A NeMo-Run ``LocalExecutor``: torchrun over ``devices_per_node`` local ranks when there is more than one."""
    import nemo_run as run

    nproc = config.cluster.devices_per_node
    launcher = run.Torchrun(rdzv_backend="c10d", rdzv_port=29500) if nproc > 1 else None
    env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    env_vars.update(env or {})
    return run.LocalExecutor(ntasks_per_node=nproc, launcher=launcher, env_vars=env_vars)


def local_overrides(config: RecipeConfig, overrides: Sequence[str]) -> list[str]:
    """The user's overrides with ``output_dir`` pinned to an absolute path, so outputs land where the user launched
    from and not in NeMo-Run's job directory (the local executor runs there)."""
    user = [o for o in overrides if o.split("=", 1)[0].strip() != "output_dir"]
    user.append(f"output_dir={os.path.abspath(config.output_dir or os.path.join('runs', config.name))}")
    return user


def local_command(recipe: str, config: RecipeConfig, overrides: Sequence[str]) -> list[str]:
    """The command the local executor runs (for ``--dry-run``)."""
    args = train_args(recipe, config, local_overrides(config, overrides))
    nproc = config.cluster.devices_per_node
    if nproc > 1:
        return [
            "torchrun",
            "--rdzv-backend",
            "c10d",
            "--nnodes",
            "1",
            f"--nproc-per-node={nproc}",
            "-m",
            TRAIN_MODULE,
            *args,
        ]
    return [sys.executable, "-m", TRAIN_MODULE, *args]


def run_local(
    recipe: str,
    config: RecipeConfig,
    overrides: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    nemo_run_home: str | None = None,
    tail_logs: bool = True,
) -> tuple[bool, str]:
    """Run through NeMo-Run's ``LocalExecutor`` and wait; returns ``(succeeded, experiment directory)``.

    ``output_dir`` is pinned to an absolute path (see :func:`local_overrides`).
    """
    import nemo_run as run
    from torchx.specs import AppState

    if nemo_run_home:
        os.environ["NEMORUN_HOME"] = nemo_run_home
    user = local_overrides(config, overrides)
    executor = local_executor(config, env)
    with run.Experiment(config.name, executor=executor, base_dir=nemo_run_home) as exp:
        exp.add(_script(train_args(recipe, config, user)), name=config.name, tail_logs=tail_logs)
        exp.run(detach=False, tail_logs=tail_logs)
    # NeMo-Run waits for non-sequential jobs when the experiment's context exits, so read the states afterwards.
    states = [getattr(job, "state", None) for job in exp.jobs]
    return bool(states) and all(state == AppState.SUCCEEDED for state in states), exp._exp_dir


def local_dry_run(recipe: str, config: RecipeConfig, overrides: Sequence[str]) -> str:
    """What ``--executor local`` would run, as one shell line."""
    return shlex.join(local_command(recipe, config, overrides))
