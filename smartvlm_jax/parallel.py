"""The one place for sharding and JAX's process set-up: the device mesh, partition rules, multi-process
start-up and the persistent compilation cache.

Every device of every process sits in one ``('data', 'fsdp')`` mesh. Batches are split over both axes
(so FSDP-sharded towers still see data parallelism), the trainable head is replicated, and frozen towers
are replicated unless a rule shards their large matrices over ``fsdp`` (big_vision's regex tables).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXES = ("data", "fsdp")

# (regex over the "/"-joined parameter path, spec). First match wins; the catch-all replicates.
REPLICATED_RULES: tuple[tuple[str, P], ...] = ((".*", P()),)
# Large towers (SigLIP so400m, DINOv2-L/G): shard the big matrices' first axis over fsdp.
TOWER_FSDP_RULES: tuple[tuple[str, P], ...] = (
    (r".*(kernel|weight)$", P("fsdp")),
    (".*", P()),
)


def make_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices (of all processes), fsdp devices per group."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"--config.mesh.fsdp={fsdp} does not divide the {len(devices)} devices")
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, DATA_AXES)


def mesh_devices(num_devices: int = -1) -> list[jax.Device]:
    """All devices (-1), or the first ``num_devices`` of a single-process run (tests, partial machines)."""
    devices = jax.devices()
    if num_devices < 0:
        return devices
    if jax.process_count() > 1 or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"--config.mesh.num_devices={num_devices} must be -1 or 1..{len(devices)} in a single-process run"
        )
    return devices[:num_devices]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "--config.batch_size") -> None:
    """Batches are split evenly over devices and processes; say which field breaks that."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{field}={batch_size} is not divisible by the {n} devices of the mesh")
    if batch_size % jax.process_count():
        raise ValueError(f"{field}={batch_size} is not divisible by the {jax.process_count()} processes")


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def partition_specs(tree, rules: Sequence[tuple[str, P]]):
    """A tree of PartitionSpecs for ``tree`` from (regex, spec) rules matched against "/"-joined paths.

    A spec that does not fit a leaf (too many axes, or an axis the mesh size does not divide) falls back
    to replication for that leaf, so one rule table serves every tower size.
    """

    def spec_for(path, leaf):
        name = _path_name(path)
        for pattern, spec in rules:
            if re.fullmatch(pattern, name):
                return spec if len(spec) <= np.ndim(leaf) else P()
        raise ValueError(f"no partition rule matches parameter {name!r}")

    return jax.tree_util.tree_map_with_path(spec_for, tree)


def shardings_for(tree, mesh: Mesh, rules: Sequence[tuple[str, P]] = REPLICATED_RULES):
    """NamedShardings for ``tree`` (arrays or ShapeDtypeStructs) under ``rules`` on ``mesh``."""
    specs = partition_specs(tree, rules)

    def fit(leaf, spec):
        for dim, axis in zip(np.shape(leaf), spec, strict=False):
            if axis is not None and dim % mesh.shape[axis]:
                return NamedSharding(mesh, P())
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(fit, tree, specs)


def any_process(flag: bool) -> bool:
    """``flag`` OR-ed over all processes, the same answer on each: for decisions they must take together.

    A SIGTERM (preemption, or passed on by a launcher) reaches processes at different steps; stopping on a
    per-process flag would send one process into a checkpoint's barriers while another runs the next
    step's collectives, and the job would hang.
    """
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _initialize(context: str, coordinator: str, **kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)``; a failure to form the job names the process, coordinator
    and timeouts first."""
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # JAX raises its runtime error types here; say who waited for what
        raise RuntimeError(f"JAX distributed start failed at {coordinator} ({context}): {e}") from e


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Start multi-process JAX when the run asks for it (before any other JAX call).

    ``config.distributed`` fields: ``mode`` is "none", "auto" (bare ``jax.distributed.initialize()``, as on
    Cloud TPU or SLURM where JAX reads the cluster from the environment) or "explicit" (coordinator address,
    process count and id from the config, for GPU clusters and local tests). Timeouts bound how long a
    process waits for a missing or dead peer, so a failed job exits instead of hanging.
    """
    cfg = config.distributed
    mode = cfg.mode
    if mode == "none":
        return
    timeouts = dict(
        initialization_timeout=int(cfg.initialization_timeout_s),
        heartbeat_timeout_seconds=int(cfg.heartbeat_timeout_s),
    )
    waits = (
        f"waiting up to {timeouts['initialization_timeout']} s for every process to join; a peer silent "
        f"for {timeouts['heartbeat_timeout_seconds']} s (heartbeat timeout) then stops the job"
    )
    if mode == "auto":
        log.info("JAX distributed (auto): joining the coordinator the environment names, %s", waits)
        _initialize(waits, "the coordinator the environment names", **timeouts)
    elif mode == "explicit":
        process_id = cfg.process_id
        if process_id < 0:  # launchers that export the rank (SLURM, launch/local.sh) leave it in the env
            process_id = int(os.environ.get("SMARTVLM_PROCESS_ID", os.environ.get("SLURM_PROCID", "-1")))
        if not cfg.coordinator_address or cfg.num_processes < 1 or process_id < 0:
            raise ValueError(
                "config.distributed.mode='explicit' needs coordinator_address, num_processes >= 1 and "
                f"process_id >= 0 (got {cfg.coordinator_address!r}, {cfg.num_processes}, {process_id})"
            )
        # Said before JAX starts: when a peer never joins or dies, JAX's own abort text names neither.
        who = f"process {process_id} of {cfg.num_processes}, coordinator {cfg.coordinator_address}"
        log.info("JAX distributed: %s; %s", who, waits)
        _initialize(
            f"{who}; {waits}",
            cfg.coordinator_address,
            coordinator_address=cfg.coordinator_address,
            num_processes=int(cfg.num_processes),
            process_id=int(process_id),
            **timeouts,
        )
    else:
        raise ValueError(f"--config.distributed.mode={mode!r} is not one of 'none', 'auto', 'explicit'")
    log.info(
        "JAX process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def enable_compile_cache(cache_dir: str) -> pathlib.Path | None:
    """Turn JAX's persistent compilation cache on in ``cache_dir`` (``config.compile_cache_dir``), or off
    for ``""``; returns the directory in use, or None when off. Call before the first compilation.

    Every executable is stored, however small or quick to compile (JAX's defaults keep only those that
    took over 1 s), so a second run of a config compiles nothing the first one did. XLA:CPU cannot
    serialise an executable holding one of its oneDNN fusions (JAX warns and compiles it each run), which
    is why towers running the oneDNN kernels keep XLA's default dots (``Tower.compiler_options``). The
    directory is created if needed; one that cannot be is an input error (OSError) naming the field. JAX
    settles whether and where it caches at its first compilation, so a call that changes either (another
    run in the same process) resets that decision.
    """
    path = pathlib.Path(cache_dir).expanduser().absolute() if cache_dir else None
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(
                f"--config.compile_cache_dir={cache_dir!r} cannot be created ({e}); '' turns the cache off"
            ) from e
    current = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    wanted = (path is not None, str(path) if path else current[1])
    if current != wanted:  # JAX decides once per process whether and where it caches: start over
        compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", path is not None)
    if path is None:
        return None
    compilation_cache.set_cache_dir(str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit, no override
    return path
