"""torch.distributed set-up for ``torchrun`` launches (one process per GPU, gloo on CPU).

A plain ``python -m priormim pretrain`` runs as a world of one; nothing here is a launcher.

What makes a run of N processes equal to a run of one (see docs/scaling.md):

* :class:`GlobalBatchSampler`: the shuffle depends on (seed, epoch) only; global batch ``b`` is
  the same slice of the permutation whatever the world size, and rank ``r`` takes the
  ``r``-th contiguous piece of it. DDP averages the gradients of equal-size pieces, which is
  the gradient of the mean loss over the global batch.
* :func:`sample_seed`: the random augmentation (and, in deterministic mode, the mask) of a
  sample is drawn from a generator seeded by (run seed, epoch, sample index, stream), so it
  does not depend on the rank, the number of loader workers or a resume.
* :class:`PerSampleMasking`: calls the masking strategy once per sample with that sample's
  generator (exact, a few small kernel launches per sample; used with ``train.deterministic``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from priormim.data.seeds import AUGMENT_STREAM, MASK_STREAM, sample_seed  # re-exported: used from here too
from priormim.devices import resolve_device  # noqa: F401 - re-exported (CLI, fine-tuning, tests)

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """Rank, world size and local rank as torchrun sets them (a world of one without them)."""
    from priormim.errors import UserError

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    try:
        info = DistInfo(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise UserError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc}); launch with torchrun") from exc
    if not 0 <= info.rank < max(info.world_size, 1):
        raise UserError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}; launch with torchrun")
    if info.world_size > 1 and ("MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ):
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set; launch with torchrun")
    return info


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any.

    torchrun (and ``srun`` with the same variables) sets ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the backend is NCCL on GPUs and gloo
    on CPU. A malformed environment is a UserError, not a hang.
    """
    info = dist_info_from_env()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


class StoreGroup:
    """Coordination of torchrun's processes through its key-value store, *without* a process
    group: for work split into independent jobs (fine-tuning seeds), where code that gathers
    over the default group whenever one exists (e.g. ``SegmentationMeter``) must stay local.

    Every method is called by every rank with the same ``key``; values are pickled.
    """

    def __init__(self, info: DistInfo, name: str) -> None:
        import datetime

        from torch.distributed import PrefixStore, rendezvous

        self.info = info
        store, _, _ = next(rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = PrefixStore(f"priormim/{name}/{attempt}/", store)
        self._long = datetime.timedelta(days=7)  # a rank may wait for the others' whole jobs

    def _get(self, key: str, *, long: bool = False) -> Any:
        import pickle

        if long:
            self.store.wait([key], self._long)
        return pickle.loads(self.store.get(key))

    def _set(self, key: str, value: Any) -> None:
        import pickle

        self.store.set(key, pickle.dumps(value))

    def run_on_main(self, fn: Callable[[], T], key: str) -> T:
        """Like :func:`run_on_main`: rank 0 runs ``fn``, every rank gets its result or error."""
        from priormim.errors import UserError

        if self.info.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self._set(key, ("error", str(exc)))
                raise
            self._set(key, ("ok", result))
            return result
        status, value = self._get(key)
        if status == "error":
            raise UserError(f"rank {self.info.rank}: stopping because rank 0 failed ({value})")
        return value

    def all_gather(self, key: str, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank; waits as long as it takes."""
        self._set(f"{key}/{self.info.rank}", obj)
        return [self._get(f"{key}/{r}", long=True) for r in range(self.info.world_size)]

    def close(self) -> None:
        """Rank 0 (which may host the store) waits until every rank has read what it needs."""
        import datetime

        self._set(f"bye/{self.info.rank}", True)
        if self.info.is_main:
            try:
                self.store.wait([f"bye/{r}" for r in range(self.info.world_size)], datetime.timedelta(minutes=5))
            except Exception:  # noqa: BLE001 - a peer that died has nothing left to read
                pass


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (identity in a world of one)."""
    if is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (identity in a world of one)."""
    if is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; identity in a world of one)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a world of one)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class PeerFailed(Exception):
    """Raised on the other ranks when rank 0 failed in :func:`run_on_main` (it prints the reason)."""


def run_on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    If ``fn`` raises on rank 0, rank 0 re-raises it (the CLI prints the one-line message) and
    the other ranks raise a :class:`priormim.errors.UserError` saying so, instead of waiting
    forever at the next collective.
    """
    from priormim.errors import UserError

    if not info.enabled or not is_initialized():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
            error = exc
    payload = broadcast_object(("error", str(error)) if error is not None else ("ok", result))
    if error is not None:
        raise error
    if payload[0] == "error":
        raise UserError(f"rank {info.rank}: stopping because rank 0 failed ({payload[1]})")
    return payload[1]


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()




# -- reproducible sharding and per-sample randomness ---------------------------------------------
# sample_seed and its streams live in the data layer (priormim.data.seeds); re-exported above.


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of the ``n`` samples in ``epoch``: a function of (seed, epoch) only."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(sample index, epoch)`` keys for one rank.

    The epoch's permutation (:func:`epoch_permutation`) is cut into global batches of
    ``batch_size * world_size`` (the ragged tail is dropped, so every rank runs the same number
    of steps); rank ``r`` takes items ``[r * batch_size, (r + 1) * batch_size)`` of each. One
    process with ``batch_size * world_size`` therefore sees exactly the same global batches.
    Call :meth:`set_epoch` before iterating (works with persistent loader workers: the
    sampler runs in the main process).
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.num_batches = self.n // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_permutation(self.n, self.seed, self.epoch, self.shuffle)
        g = self.batch_size * self.world_size
        for b in range(self.num_batches):
            start = b * g + self.rank * self.batch_size
            yield [(i, self.epoch) for i in order[start : start + self.batch_size]]


class PerSampleMasking:
    """Wrap a masking strategy so that each sample's mask comes from its own generator.

    :meth:`bind` is given the ``(index, epoch)`` keys of the next batch (see
    :class:`BoundLoader`); the next call then draws sample ``j``'s mask with a generator seeded
    by ``sample_seed(seed, epoch, index_j, MASK_STREAM)``, so the mask of a sample does not
    depend on which rank or batch position it lands in. Without bound keys of the right length
    (a caller that builds its own batches) it falls back to the wrapped strategy and the
    context's generator. Everything else (``state``, ``mask_ratio``, ...) is the wrapped
    strategy's.
    """

    def __init__(self, inner: Any, seed: int) -> None:
        self.inner = inner
        self.seed = int(seed)
        self._keys: list[tuple[int, int]] | None = None

    def bind(self, keys: list[tuple[int, int]] | None) -> None:
        self._keys = keys

    def __call__(self, ctx: Any) -> Tensor:
        keys, self._keys = self._keys, None
        if keys is None or len(keys) != ctx.batch_size:
            return self.inner(ctx)
        prior = ctx.checked_prior()
        device = prior.device if prior is not None else torch.device(ctx.device)
        masks, fallback = [], 0
        for j, (index, epoch) in enumerate(keys):
            g = torch.Generator(device=device).manual_seed(sample_seed(self.seed, epoch, index, MASK_STREAM))
            sub = dataclasses.replace(
                ctx, batch_size=1, device=device, generator=g,
                patch_prior=None if prior is None else prior[j : j + 1],
            )
            masks.append(self.inner(sub))
            fallback = fallback + getattr(self.inner, "_last_fallback", 0)
        if hasattr(self.inner, "_last_fallback"):
            self.inner._last_fallback = fallback  # per-batch count for state(), as unwrapped
        return torch.cat(masks)

    def state(self, ctx: Any) -> dict[str, float]:
        return self.inner.state(ctx)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)


class BoundLoader:
    """A DataLoader that binds each batch's ``key`` list to a :class:`PerSampleMasking`
    just before handing the batch out (iteration is synchronous, so the next masking call
    belongs to this batch), counts the unreadable images the dataset replaced (``skipped``)
    and turns a UserError raised in a loader worker back into its one-line form."""

    def __init__(self, loader: Any, masking: PerSampleMasking | None = None) -> None:
        self.loader = loader
        self.masking = masking
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        from priormim.errors import UserError

        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except UserError as exc:
                # A worker's exception comes back with its traceback in the message; keep
                # the last line, which is the original one-line error.
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                if len(lines) > 1:
                    last = lines[-1]
                    prefix = "priormim.errors.UserError: "
                    raise UserError(last[len(prefix):] if last.startswith(prefix) else last) from None
                raise
            if isinstance(batch, dict) and "skipped" in batch:
                self.skipped += int(torch.as_tensor(batch["skipped"]).sum())
            if self.masking is not None:
                self.masking.bind(batch_keys(batch))
            yield batch

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def batch_keys(batch: dict) -> list[tuple[int, int]] | None:
    """``(index, epoch)`` per sample of a collated batch (None if the batch has no epoch)."""
    if "index" not in batch or "epoch" not in batch:
        return None
    return list(zip((int(i) for i in batch["index"]), (int(e) for e in batch["epoch"])))
