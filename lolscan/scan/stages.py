"""Scoring batches in two overlapping stages: batch k+1 is assembled on one thread while batch k is
scored on another (torch ops release the GIL; on CUDA both threads only enqueue work).

Each stage runs the same operations on the same data as one thread would, in the same order per
batch, so scores are bit for bit those of scoring batch after batch. Two sets of batch buffers
alternate; the scorer keeps at most two batches in the stages, so a set is reused only once the
batch that used it has been scored.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .lightread import one_line
from .packing import Buffers, InSlot, slot_views, stack


class Stages:
    """Assemble (`packing.stack`, from shared-memory slots or packed factors) and predict, pipelined.

    ``slot_of(i)`` is the shared-memory slot ``i`` as a float32 tensor; ``timings`` receives the
    seconds spent in each stage (they overlap, so their sum can exceed the wall time).
    """

    def __init__(self, ckpt: Any, dtype: torch.dtype, slot_of: Any, timings: dict[str, float]):
        self.ckpt, self.dtype, self.slot_of, self.timings = ckpt, dtype, slot_of, timings
        self._assembler = ThreadPoolExecutor(1, thread_name_prefix="lolscan-assemble")
        self._predictor = ThreadPoolExecutor(1, thread_name_prefix="lolscan-predict")
        self._buffers = (Buffers(), Buffers())
        self._count = 0

    def submit(self, items: list[Any]) -> Future[None]:
        """Score the readable ``items`` of one batch; the future is done when their rows hold predictions
        (or a scoring error) and their factors, slots included, are no longer in use."""
        todo = [it for it in items if it.packed is not None]
        buffers = self._buffers[self._count % 2]
        self._count += 1
        assembled = self._assembler.submit(self._assemble, todo, buffers)
        return self._predictor.submit(self._predict, todo, assembled, buffers)

    def close(self) -> None:
        """Wait for what runs (it may read a slot), drop what is queued."""
        self._assembler.shutdown(wait=True, cancel_futures=True)
        self._predictor.shutdown(wait=True, cancel_futures=True)

    def _views(self, it: Any) -> Any:
        """``it.packed``, as views of its slot (copied to the device in one transfer) when it is in one."""
        if isinstance(it.packed, InSlot):
            it.packed = slot_views(self.slot_of(it.slot), self.ckpt.spec, it.packed, self.ckpt.device)
        return it.packed

    def _stack(self, items: list[Any], buffers: Buffers) -> Any:
        return stack([self._views(it) for it in items], self.ckpt.spec, [it.found.source for it in items], self.ckpt.device,
                     self.dtype, buffers)

    def _assemble(self, todo: list[Any], buffers: Buffers) -> Any:
        if not todo:
            return None
        t0 = time.perf_counter()
        try:
            return self._stack(todo, buffers)
        finally:
            self.timings["assemble"] += time.perf_counter() - t0

    def _predict(self, todo: list[Any], assembled: Future[Any], buffers: Buffers) -> None:
        if not todo:
            return
        try:
            batch = assembled.result()
            t0 = time.perf_counter()
            preds: list[dict[str, Any] | None] = list(self.ckpt.predict(batch))
            domains = self.ckpt.domain_rows(batch) if self.ckpt.domain is not None else None
            self.timings["predict"] += time.perf_counter() - t0
        except Exception:  # isolate the adapter that breaks the batch
            preds, domains = [], [] if self.ckpt.domain is not None else None
            for it in todo:
                try:
                    one = self._stack([it], buffers)
                    preds.append(self.ckpt.predict(one)[0])
                    if domains is not None:
                        domains.append(self.ckpt.domain_rows(one)[0])
                except Exception as exc:
                    it.row.update(status="error", error=f"scoring failed: {one_line(exc, it.found.source)}")
                    preds.append(None)
                    if domains is not None:
                        domains.append(None)
        device = self.ckpt.device
        if device.type == "cuda":  # the copies out of the slots are done before the slots are reused
            torch.cuda.current_stream(device).synchronize()
        fields = self.ckpt.row_fields()  # several checkpoints: which one predicts each target
        for k, (it, p) in enumerate(zip(todo, preds)):
            if p is not None:
                it.row["predictions"] = p
                it.row.update(fields)
                if domains is not None and domains[k] is not None:
                    it.row["domain"] = domains[k]
            it.packed = None  # release the factors
