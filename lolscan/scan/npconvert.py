"""Float32 copies of safetensors tensors with numpy, bit for bit as ``torch.Tensor.to(torch.float32)``.

numpy's own float16 cast converts one element at a time (about 1.7 ns each here); `f16_to_f32`
does it in six vectorised passes (about 0.4 ns), exactly: the half's bits are moved into a float32
whose exponent is then rebiased by one exact multiplication by 2¹¹², which is right for normal
and subnormal halves alike; infinities and NaNs (quieted, as torch's vectorised conversion does)
are patched afterwards. Tensors that lie close together with one dtype are converted in one go.
"""
from __future__ import annotations

import bisect

import numpy as np

from ..formats.stheader import Entry

_TWO_112 = np.float32(2.0**112)
_HALF_RANGE = 65536.0  # |x| ≥ 2¹⁶ after the rebias: the half had exponent 31 (inf or NaN)
_MAX_GAP = 1024  # bytes between two tensors that are still converted in one run (e.g. kohya alphas)
NUMPY = {"F16": np.dtype("<u2"), "BF16": np.dtype("<u2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def f16_to_f32(h: np.ndarray, out: np.ndarray) -> None:
    """``out`` (float32) = the IEEE halves whose bits are ``h`` (uint16), exactly."""
    u = out.view(np.uint32)
    np.copyto(u, h)
    u <<= 16  # sign at bit 31, the half's exponent and mantissa at bits 16..30
    i = out.view(np.int32)
    i >>= 3  # arithmetic shift: exponent and mantissa at bits 13..27, the sign copied into 28..31
    u &= 0x8FFFFFFF  # sign at bit 31 only
    out *= _TWO_112
    if out.max(initial=0.0) >= _HALF_RANGE or out.min(initial=0.0) <= -_HALF_RANGE:
        big = np.abs(out) >= _HALF_RANGE
        v = u[big]
        mantissa = v & np.uint32(0x007FFFFF)
        quiet = np.where(mantissa != 0, np.uint32(0x00400000), np.uint32(0))
        u[big] = (v & np.uint32(0x80000000)) | np.uint32(0x7F800000) | mantissa | quiet


def bf16_to_f32(h: np.ndarray, out: np.ndarray) -> None:
    """bfloat16 is the top half of a float32."""
    u = out.view(np.uint32)
    np.copyto(u, h)
    u <<= 16


class Converter:
    """Float32 views of many tensors of one data region, converted run by run into a reused buffer."""

    def __init__(self) -> None:
        self._scratch = np.empty(0, np.float32)

    def float32(self, data: memoryview, entries: list[Entry]) -> dict[tuple[int, int], np.ndarray]:
        """{(begin, end): flat float32 array} for each entry (F16, BF16, F32 or F64). float32 tensors
        are views of ``data``; the others are converted into a buffer kept for the next call."""
        runs = _runs([e for e in entries if e[0] != "F32"])
        need = sum((end - begin) // NUMPY[dtype].itemsize for dtype, begin, end in runs)
        if self._scratch.size < need:
            self._scratch = np.empty(need, np.float32)
        at = 0
        starts: list[int] = []  # scratch index of each run's first element
        for dtype, begin, end in runs:
            count = (end - begin) // NUMPY[dtype].itemsize
            src = np.frombuffer(data, NUMPY[dtype], count, begin)
            dst = self._scratch[at : at + count]
            if dtype == "F16":
                f16_to_f32(src, dst)
            elif dtype == "BF16":
                bf16_to_f32(src, dst)
            else:
                np.copyto(dst, src, casting="same_kind")
            starts.append(at)
            at += count
        begins = [begin for _, begin, _ in runs]
        out: dict[tuple[int, int], np.ndarray] = {}
        for dtype, _, begin, end in entries:
            count = (end - begin) // NUMPY[dtype].itemsize
            if dtype == "F32" or count == 0:
                out[begin, end] = np.frombuffer(data, NUMPY[dtype], count, begin).astype(np.float32, copy=False)
                continue
            i = bisect.bisect_right(begins, begin) - 1  # the run holding this tensor
            start = starts[i] + (begin - runs[i][1]) // NUMPY[dtype].itemsize
            out[begin, end] = self._scratch[start : start + count]
        return out


def _runs(entries: list[Entry]) -> list[tuple[str, int, int]]:
    """(dtype, begin, end) spans covering ``entries``: neighbours of one dtype and alignment, at most
    `_MAX_GAP` bytes apart, share a span (the bytes between are converted too, and not used)."""
    runs: list[list] = []
    for dtype, _, begin, end in sorted(entries, key=lambda e: e[2]):
        if begin == end:
            continue
        size = NUMPY[dtype].itemsize
        last = runs[-1] if runs else None
        if last is not None and last[0] == dtype and begin - last[2] <= _MAX_GAP and (begin - last[1]) % size == 0:
            last[2] = max(last[2], end)
        else:
            runs.append([dtype, begin, end])
    return [(d, b, e) for d, b, e in runs]
