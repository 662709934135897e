"""DDP gradient-communication hooks, each counting the bytes it sends.

Chosen by ``DistributedConfig.comm_hook``:

* ``none`` — plain all-reduce of each bucket (PyTorch's ``allreduce_hook``);
* ``fp16`` / ``bf16`` — cast each bucket to half precision for the all-reduce;
* ``powersgd`` — PyTorch's PowerSGD (rank-r low-rank approximation with error feedback),
  with plain all-reduce for the first ``powersgd_warmup`` iterations;
* ``topk`` — our own: every bucket sends the top ``k = ceil(ratio * n)`` entries of
  ``|gradient + error|`` as ``(int32 index, value)`` pairs through one all-gather, and keeps
  what it did not send as error feedback for the next step (Stich et al. 2018; Lin et al.,
  "Deep Gradient Compression", 2018). Every rank sums what all ranks sent and divides by the
  world size, as all-reduce would.

"Bytes sent" is the payload one rank hands to the collective per optimizer step (not the
wire traffic of the collective's algorithm, which is a constant factor of it for ring
all-reduce and ``world_size - 1`` times it for all-gather). Hook state that changes training
(error feedback, PowerSGD's memories) goes into checkpoints through ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

from core.train.config import DistributedConfig


class CommHook:
    """Base: registration and byte accounting. Subclasses implement :meth:`hook`."""

    name = "none"

    def __init__(self) -> None:
        self.step_bytes = 0  # bytes sent during the current optimizer step
        self.last_step_bytes = 0  # bytes sent during the previous optimizer step
        self.total_bytes = 0
        self.steps = 0

    def register(self, ddp_model: torch.nn.parallel.DistributedDataParallel) -> None:
        ddp_model.register_comm_hook(self, _dispatch)

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        self.step_bytes += bucket.buffer().numel() * bucket.buffer().element_size()
        return default_hooks.allreduce_hook(None, bucket)

    def end_step(self) -> None:
        """Close the byte count of one optimizer step (called by the Trainer)."""
        self.last_step_bytes = self.step_bytes
        self.total_bytes += self.step_bytes
        self.step_bytes = 0
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_bytes = int(state.get("total_bytes", 0))
        self.steps = int(state.get("steps", 0))


def _dispatch(state, bucket):  # unannotated: DDP rejects string annotations on hooks
    return state.hook(bucket)


class HalfHook(CommHook):
    """All-reduce in fp16 or bf16 (half the bytes of fp32)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.name = "fp16" if dtype == torch.float16 else "bf16"
        self._fn = (
            default_hooks.fp16_compress_hook
            if dtype == torch.float16
            else default_hooks.bf16_compress_hook
        )

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        self.step_bytes += bucket.buffer().numel() * 2
        return self._fn(None, bucket)


class PowerSGDHook(CommHook):
    """PyTorch's PowerSGD with byte accounting and checkpointable state."""

    name = "powersgd"

    def __init__(self, rank: int, warmup: int, seed: int = 0) -> None:
        super().__init__()
        self.state = psgd.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=warmup,
            random_seed=seed,
        )

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buf = bucket.buffer()
        if self.state.iter < self.state.start_powerSGD_iter:
            self.step_bytes += buf.numel() * buf.element_size()
        else:
            before = self.state.total_numel_after_compression
            fut = psgd.powerSGD_hook(self.state, bucket)
            self.step_bytes += (
                self.state.total_numel_after_compression - before
            ) * buf.element_size()
            return fut
        return psgd.powerSGD_hook(self.state, bucket)

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            **super().state_dict(),
            "iter": s.iter,
            "error_dict": dict(s.error_dict),
            "p_memory_dict": dict(s.p_memory_dict),
            "q_memory_dict": dict(s.q_memory_dict),
            "rng": s.rng.get_state(),
            "numel": [s.total_numel_before_compression, s.total_numel_after_compression],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        s = self.state
        s.iter = int(state["iter"])
        s.error_dict = dict(state["error_dict"])
        s.p_memory_dict = dict(state["p_memory_dict"])
        s.q_memory_dict = dict(state["q_memory_dict"])
        s.rng.set_state(state["rng"])
        s.total_numel_before_compression, s.total_numel_after_compression = state["numel"]


def topk_sparsify(acc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``acc`` (1-D) into its ``k`` largest-magnitude entries and the rest.

    Returns ``(indices int32, values, residual)`` with ``residual`` equal to ``acc`` with the
    sent entries zeroed, so that ``residual.index_put((indices,), values) == acc`` exactly.
    ``residual`` reuses ``acc``'s memory. On CUDA the hook uses
    :func:`core.kernels.sparsify.sparsify_ef` instead (sampled threshold, one fused pass);
    this is the exact reference.
    """
    n = acc.numel()
    if k >= n:
        idx = torch.arange(n, device=acc.device, dtype=torch.int32)
        values = acc.clone()
    else:
        idx64 = torch.topk(acc.abs(), k, sorted=False).indices
        idx = idx64.to(torch.int32)
        values = acc[idx64]
    acc[idx.long()] = 0
    return idx, values, acc


class TopKHook(CommHook):
    """Top-k sparsified all-gather with error feedback, keyed per parameter for checkpoints."""

    name = "topk"

    def __init__(
        self,
        ratio: float,
        param_names: dict[int, str],
        sparsify: Callable[
            [torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        ] = topk_sparsify,
    ) -> None:
        super().__init__()
        self.ratio = ratio
        self.param_names = param_names
        self.sparsify = sparsify
        self._errors: dict[tuple[str, ...], torch.Tensor] = {}
        self._layouts: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        self._loaded: dict[str, torch.Tensor] = {}

    def _per_param(self) -> dict[str, torch.Tensor]:
        """Every residual known, sliced per parameter (loaded ones and live bucket ones)."""
        out = dict(self._loaded)
        for key, err in self._errors.items():
            offset = 0
            for name, numel in self._layouts[key]:
                out[name] = err[offset : offset + numel]
                offset += numel
        return out

    def _error_for(
        self, key: tuple[str, ...], params: list[torch.Tensor], buf: torch.Tensor
    ) -> torch.Tensor:
        err = self._errors.get(key)
        if err is not None:
            return err
        # A bucket layout not seen before: DDP rebuilds buckets after its first iteration (and
        # again after a resume). Carry every parameter's residual over to the new layout.
        known = self._per_param()
        layout = [(self.param_names[id(p)], p.numel()) for p in params]
        parts = [
            known[name].to(buf.device, buf.dtype).flatten()
            if name in known
            else torch.zeros(numel, device=buf.device, dtype=buf.dtype)
            for name, numel in layout
        ]
        names = {name for name, _ in layout}
        for old in [k for k in self._errors if names.intersection(k)]:
            del self._errors[old]
        self._loaded = {n: t for n, t in self._loaded.items() if n not in names}
        self._layouts[key] = layout
        return torch.cat(parts) if parts else torch.zeros_like(buf)

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buf = bucket.buffer()
        params = bucket.parameters()
        key = tuple(self.param_names[id(p)] for p in params)
        err = self._error_for(key, params, buf)
        n = buf.numel()
        k = max(1, math.ceil(self.ratio * n))
        if buf.is_cuda and self.sparsify is topk_sparsify:
            # one fused pass on GPU: sampled threshold, emit, residual update (core.kernels)
            from core.kernels.sparsify import sparsify_ef

            idx, values, residual = sparsify_ef(buf, err, k)
        else:
            idx, values, residual = self.sparsify(buf + err, k)
        self._errors[key] = residual
        payload = torch.cat([idx.view(torch.uint8), values.view(torch.uint8)])
        self.step_bytes += payload.numel()
        world = dist.get_world_size()
        gathered = torch.empty(world * payload.numel(), dtype=torch.uint8, device=buf.device)
        work = dist.all_gather_single(gathered, payload, async_op=True)
        size, ibytes = payload.numel(), idx.numel() * 4

        def decode(_: torch.futures.Future) -> torch.Tensor:
            out = torch.zeros_like(buf)
            for r in range(world):
                chunk = gathered[r * size : (r + 1) * size]
                out.index_add_(0, chunk[:ibytes].view(torch.int32), chunk[ibytes:].view(buf.dtype))
            return buf.copy_(out.div_(world))

        return work.get_future().then(decode)

    def state_dict(self) -> dict[str, Any]:
        per_param = {n: t.detach().cpu().clone() for n, t in self._per_param().items()}
        return {**super().state_dict(), "ratio": self.ratio, "errors": per_param}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._errors.clear()
        self._loaded = dict(state.get("errors", {}))


def build_comm_hook(cfg: DistributedConfig, param_names: dict[int, str], seed: int = 0) -> CommHook:
    """The hook object for ``cfg.comm_hook``."""
    if cfg.comm_hook == "fp16":
        return HalfHook(torch.float16)
    if cfg.comm_hook == "bf16":
        return HalfHook(torch.bfloat16)
    if cfg.comm_hook == "powersgd":
        return PowerSGDHook(cfg.powersgd_rank, cfg.powersgd_warmup, seed)
    if cfg.comm_hook == "topk":
        return TopKHook(cfg.topk_ratio, param_names)
    return CommHook()
