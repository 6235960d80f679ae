"""One zoo built by several processes: ``lolscan zoo build --nproc N``, or N copies under ``torchrun``.

Groups of adapters are independent, so the processes (ranks) never talk while they train. Rank 0
prepares the folder (zoo.json with the base model's labels; the manifest without a torn tail) and
tells the others which groups are left — one gloo broadcast, the only collective — then every rank
trains its share (`assign`: a fixed function of the groups left and their sizes, never of timing) on
its own device and commits each finished group's rows into manifest.jsonl under a file lock, in the
order one process writes them (`commit_rows`). An adapter depends on its group only, never on the
rank that trained it, so the zoo is the one a single process builds with the same seed: byte for
byte on CPUs at the same number of threads per process (torch's CPU kernels round differently on more
threads; unless OMP_NUM_THREADS is set, torchrun gives each rank one thread and `launch` cores // N);
with ranks sharing one H100 the adapters and zoo.json were the same bytes and the labels agreed to
about 1e-6 relative (bench/RESULTS.md, "`zoo build --nproc` on one H100"). A rank that dies loses at most its
unfinished group: the same command run again trains only the groups the manifest lacks.

`launch` is ``--nproc``: it starts the ranks as ``torchrun`` would (the same command line in N fresh
interpreters, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set) and, like torchrun,
stops the others when one fails.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import LolscanError, UsageError
from ..utils.files import atomic_write, read_jsonl

# Set in the ranks `launch` starts (the parent prints the summary of the whole build).
LAUNCHED_ENV = "LOLSCAN_ZOO_LAUNCHED"
# Test hook: "R:G" makes rank R kill itself (SIGKILL) after committing G groups, with the adapter
# folders of its next group written and that group's rows not: the worst moment for a resume.
KILL_ENV = "LOLSCAN_ZOO_TEST_KILL"
SETUP_TIMEOUT_S = 2 * 3600  # rank 0 loads the model and labels the base model while the others wait


class RankAborted(LolscanError):
    """Rank 0 refused the build (its error line says why); the other ranks leave with its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Ranks:
    """Where this process sits among the processes of one build."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Ranks":
        """The torchrun variables (absent: one process)."""
        if not environ.get("WORLD_SIZE"):
            return cls()
        try:
            world = int(environ["WORLD_SIZE"])
            rank = int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise UsageError(f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: not a rank of the world")
        return cls(rank, world, local)

    @property
    def many(self) -> bool:
        return self.world > 1


def rank_device(device: str, ranks: Ranks) -> str:
    """A bare ``cuda`` puts each rank on its own GPU (``cuda:LOCAL_RANK``); ``cuda:N`` puts every rank on
    GPU N (several ranks sharing one GPU); ``cpu`` is the CPU."""
    if device != "cuda" or not ranks.many:
        return device
    import torch

    n = torch.cuda.device_count()
    if ranks.local_rank >= n:
        raise UsageError(f"rank {ranks.rank} (local rank {ranks.local_rank}) has no GPU of its own: this machine has "
                         f"{n}; start at most {n} processes, or name one GPU for all (--device cuda:0)")
    return f"cuda:{ranks.local_rank}"


def group_cost(group: Sequence[Any], label_rows: int) -> float:
    """Relative time of one group: every step runs K·(largest batch) rows forward and backward (finished
    and shorter adapters are padded), then the label pass runs `label_rows` forward per adapter."""
    k = len(group)
    return k * (3.0 * max(s.steps for s in group) * max(s.batch_size for s in group) + label_rows)


def assign(costs: Sequence[float], world: int) -> list[list[int]]:
    """Split items 0..n-1 over `world` ranks: longest first, each to the least loaded rank (lowest rank on a
    tie), so the ranks finish together. Each rank's items come back in ascending order."""
    load = [0.0] * world
    share: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += costs[i]
        share[r].append(i)
    return [sorted(s) for s in share]


def share_from_rank0(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's `obj` on every rank (a gloo broadcast over the torchrun rendezvous), after which the ranks
    are independent: the process group is taken down again, so a rank that dies later stalls nobody."""
    if not ranks.many:
        return obj
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world,
                            timeout=datetime.timedelta(seconds=SETUP_TIMEOUT_S))
    try:
        box = [obj if ranks.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        dist.barrier()  # everyone has it before rank 0 (which holds the rendezvous store) may leave
    finally:
        dist.destroy_process_group()
    return box[0]


# ---- the manifest, committed group by group from any rank ---------------------------------------
@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on `folder` across processes (flock on the directory itself: no lock
    file is left behind)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no fcntl (Windows): one process at a time
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def commit_rows(manifest: Path, rows: list[dict[str, Any]], order: Mapping[str, tuple[int, int]]) -> int:
    """Add `rows` to the manifest in one atomic rewrite, under a lock that the other ranks take too.

    Rows are ordered by ``order[id]`` ((group position, slot): how one process appends them), so the
    file is the same whichever rank finished which group first; a row of an adapter already there is
    replaced. A torn last line (a build killed while appending, before ranks existed) is dropped, so
    that group is redone. Returns the number of rows now in the manifest."""
    with locked(manifest.parent):
        have = read_jsonl(manifest, newline_ends_a_row=False)[0]
        new = {r["id"] for r in rows}
        keep = [r for r in have if r.get("id") not in new] + list(rows)
        far = (math.inf, math.inf)
        keep = [r for _, r in sorted(enumerate(keep), key=lambda t: (order.get(t[1].get("id"), far), t[0]))]
        text = "".join(json.dumps(r) + "\n" for r in keep).encode("utf-8")
        if not manifest.exists() or manifest.read_bytes() != text:
            atomic_write(manifest, text)
            os.chmod(manifest, 0o666 & ~_umask())  # a plain file's mode, not the temporary file's 0600
    return len(keep)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(out: Path) -> list[str]:
    """The temporary files of whole-file writes (`atomic_write`: ``.NAME.XXXX.tmp``) that a killed process
    left in the zoo folder. Only while no other process of the build writes (rank 0, before the others
    start). Returns their names."""
    gone = []
    with locked(out):
        for p in out.glob(".*.tmp"):
            if p.is_file() and p.name.count(".") >= 3:
                p.unlink()
                gone.append(p.name)
    return sorted(gone)


def kill_point_for_tests(ranks: Ranks, committed: int) -> None:
    """The KILL_ENV test hook (see there)."""
    spec = os.environ.get(KILL_ENV)
    if spec and spec == f"{ranks.rank}:{committed}":
        os.kill(os.getpid(), signal.SIGKILL)


# ---- --nproc: start the ranks as torchrun would --------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LaunchResult:
    codes: list[int]  # each rank's exit status (negative: killed by that signal)
    first_failure: int | None  # the rank that failed first (None: all succeeded)
    seconds: float


def launch(argv: Sequence[str], nproc: int, *, env: Mapping[str, str] | None = None,
           poll_s: float = 0.2, grace_s: float = 10.0) -> LaunchResult:
    """Run ``python -m lolscan <argv>`` as ranks 0..nproc-1 of one build and wait for them. When one fails,
    the others are stopped (SIGTERM, then SIGKILL after `grace_s`), as torchrun does: a rank's finished
    groups are already committed, and the same command resumes the rest."""
    base = dict(os.environ if env is None else env)
    base.update({"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port()), LAUNCHED_ENV: "1"})
    if "OMP_NUM_THREADS" not in base:  # share the cores instead of each rank taking all of them
        base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    t0 = time.monotonic()
    procs = []
    for r in range(nproc):
        procs.append(subprocess.Popen([sys.executable, "-m", "lolscan", *argv],
                                      env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}))
    first: int | None = None
    try:
        while any(p.poll() is None for p in procs):
            if first is None:
                bad = [r for r, p in enumerate(procs) if p.returncode not in (None, 0)]
                if bad:
                    first = bad[0]
                    _stop(procs, grace_s)
            time.sleep(poll_s)
    except BaseException:  # Ctrl-C or the like: take the ranks down with us
        _stop(procs, grace_s)
        raise
    codes = [int(p.returncode) for p in procs]
    if first is None:
        first = next((r for r, c in enumerate(codes) if c != 0), None)
    return LaunchResult(codes, first, time.monotonic() - t0)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
