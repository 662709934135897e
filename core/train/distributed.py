"""Process-group set-up for data-parallel training, and a local launcher for tests.

Launch real runs with ``torchrun`` (``torchrun --nproc-per-node 2 -m core.reference.digits``
or ``dv train digits --nproc 2``): it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, which :func:`init_distributed` reads. Backend: NCCL on
CUDA, gloo on CPU. :func:`launch_local` spawns ``world_size`` local processes with the same
environment, for tests and notebooks. Not here: the model wrapping (see ``Trainer``) and the
gradient-compression hooks (``core.train.comm_hooks``).
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import DistributedError
from core.serialization import load_tree, save_tree


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size from the torchrun environment (single process when unset)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise DistributedError(
            f"malformed torchrun environment ({exc})",
            where="RANK/WORLD_SIZE/LOCAL_RANK",
            fix="launch with torchrun",
        ) from exc


def init_distributed(backend: str = "auto", device: torch.device | None = None) -> DistInfo:
    """Initialise the default process group when launched with WORLD_SIZE > 1 (idempotent)."""
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        if dist.get_world_size() != info.world_size:
            raise DistributedError(
                "process group size differs from WORLD_SIZE",
                fix="launch every process with the same torchrun command",
            )
        return info
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise DistributedError(
            "WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set",
            fix="launch with torchrun, or use core.train.distributed.launch_local",
        )
    if backend == "auto":
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=10)}
    if backend == "nccl" and device is not None:
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    # A process group left alive at interpreter exit can abort the process (gloo threads are
    # still joinable: "terminate called without an active exception"); the job finished, but
    # torchrun then reports a failure. Tear it down on the way out unless the caller did.
    atexit.register(shutdown_distributed)
    return info


def shutdown_distributed() -> None:
    """Destroy the default process group if this process has one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A currently free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    queue: Any,
    env: dict[str, str],
    out_dir: str,
) -> None:
    os.environ.update(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    try:
        save_tree(fn(*args), Path(out_dir) / f"rank{rank}")
        queue.put((rank, True, None))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> list[Any]:
    """Run ``fn(*args)`` in ``world_size`` spawned processes as a torchrun job would.

    ``fn`` must be importable (module-level) and return a tree of tensors, arrays, scalars and
    strings (it travels through :func:`core.serialization.save_tree`, not shared memory, so it
    outlives the worker). Returns each rank's value, rank order. A failure in any rank raises
    DistributedError carrying that rank's traceback.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    out_dir = tempfile.mkdtemp(prefix="dv-launch-")
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue, env or {}, out_dir))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while len(results) + len(errors) < world_size:
        if datetime.datetime.now() > deadline:
            break
        if queue.empty():
            if all(not p.is_alive() for p in procs) and queue.empty():
                break
            procs[0].join(0.05)
            continue
        rank, ok, value = queue.get()
        if ok:
            results[rank] = load_tree(Path(out_dir) / f"rank{rank}")
        else:
            errors.append(f"rank {rank}:\n{value}")
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    shutil.rmtree(out_dir, ignore_errors=True)
    if errors:
        raise DistributedError(
            "a local worker failed", fix="see the traceback:\n" + "\n".join(errors)
        )
    if len(results) != world_size:
        codes = [p.exitcode for p in procs]
        raise DistributedError(
            f"local workers ended without a result (exit codes {codes})",
            fix="check the worker output above",
        )
    return [results[r] for r in range(world_size)]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
