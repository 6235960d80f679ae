"""Shared-memory hand-off of packed factors from reader processes to the scorer.

The scorer creates one POSIX shared-memory segment cut into fixed-size slots, before it starts
its reader processes. Each file is read with one free slot: the reader (`lolscan.scan.lightread`, torch-free)
writes the adapter's factors straight into it (float32, or the file's own float16/bfloat16 bits with
their scales: `lolscan.scan.slots`) and sends back only the layout, a few hundred bytes, instead of
pickling megabytes. The scorer reads the slot in place and frees it once the batch holding it is
scored. An adapter that does not fit its slot travels by pickle, as before.

Leaks: only the creating process unlinks the segment (`Arena.close`, from a ``finally``); it is
also registered with multiprocessing's resource tracker, which unlinks it should the scorer be
killed. Readers attach without registering anything of their own.
"""
from __future__ import annotations

import os
from multiprocessing import shared_memory
from typing import Any

import torch

from .lightread import ArenaInfo

FLOAT_BYTES = 4
DEFAULT_BUDGET = 1 << 30  # bytes of shared memory at most, all slots together
SHM_DIR = "/dev/shm"


def packed_floats(spec: Any, rank: int) -> int:
    """float32 values of one adapter packed for ``spec`` with every group at ``rank``."""
    return sum(len(g.indices) * (g.n + g.m) * rank for g in spec.groups)


def shm_room() -> int:
    """Free bytes in the shared-memory file system (0 where there is none to ask)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def plan(spec: Any, slots: int, *, max_rank: int = 16, budget: int = DEFAULT_BUDGET) -> int:
    """Floats per slot: room for ranks up to ``max_rank``, within ``budget`` and half the free
    shared memory (writes past a full tmpfs would kill the reader); 0 = no shared memory."""
    limit = min(budget, shm_room() // 2) // max(1, slots) // FLOAT_BYTES
    want = packed_floats(spec, max_rank)
    floats = min(want, limit)
    return floats if floats >= packed_floats(spec, 1) else 0


class Arena:
    """Fixed-size float32 slots in one shared-memory segment."""

    def __init__(self, shm: shared_memory.SharedMemory, info: ArenaInfo, owner: bool):
        self._shm, self.info, self._owner = shm, info, owner
        self._flat: torch.Tensor | None = torch.frombuffer(shm.buf, dtype=torch.float32, count=info.slots * info.slot_floats)
        self._pinned = False

    @classmethod
    def create(cls, slots: int, slot_floats: int) -> Arena:
        shm = shared_memory.SharedMemory(create=True, size=slots * slot_floats * FLOAT_BYTES)
        try:
            return cls(shm, ArenaInfo(shm.name, slots, slot_floats), owner=True)
        except BaseException:
            shm.close()
            shm.unlink()
            raise

    @classmethod
    def attach(cls, info: ArenaInfo) -> Arena:
        """Attach to an existing segment without owning it (reader processes use `lightread.attach`).
        The creator's resource tracker, which readers share, already knows the segment;
        unregistering here would drop the creator's registration."""
        return cls(shared_memory.SharedMemory(name=info.name), info, owner=False)

    def slot(self, i: int) -> torch.Tensor:
        """Slot ``i`` as a 1-D float32 tensor (a view of the segment)."""
        assert self._flat is not None, "arena is closed"
        n = self.info.slot_floats
        return self._flat[i * n : (i + 1) * n]

    def pin(self) -> bool:
        """Page-lock the segment for CUDA, so host-to-device copies from it run asynchronously."""
        if self._flat is None or not torch.cuda.is_available():
            return False
        try:
            rt = torch.cuda.cudart()
            err = rt.cudaHostRegister(self._flat.data_ptr(), self._flat.numel() * FLOAT_BYTES, 0)
            self._pinned = err == rt.cudaError.success
        except Exception:  # an old or unusual runtime: copies stay synchronous, nothing else changes
            self._pinned = False
        if not self._pinned:
            _clear_cuda_error()
        return self._pinned

    def close(self) -> None:
        """Unmap (once no view is left) and, in the creating process, unlink the segment."""
        if self._pinned and self._flat is not None:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self._flat.data_ptr())
            self._pinned = False
        self._flat = None
        try:
            self._shm.close()
        except BufferError:  # a tensor view is still alive: the mapping goes when it does
            pass
        if self._owner:
            self._owner = False
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration, or torch would report it
    at its next kernel launch. torch loads libcudart globally; where the symbol is not found, skip."""
    try:
        import ctypes

        ctypes.CDLL(None).cudaGetLastError()
    except Exception:
        pass

