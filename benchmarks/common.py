"""Helpers shared by the benchmark scripts: interleaved best-of timing and peak tensor memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch


def best_seconds(*fns, repeats: int, clock=time.perf_counter) -> list[float]:
    """Fastest of ``repeats`` timed calls of each function, the functions interleaved in every round
    so that a slow phase of a shared machine hits all of them alike. ``clock``: wall time, or e.g.
    ``time.thread_time`` for the CPU time of work that runs on the calling thread alone."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = clock()
            fn()
            best[i] = min(best[i], clock() - t0)
    return best


def peak_allocated_mib(fn) -> float:
    """Peak of the tensor memory allocated during ``fn()``, in MiB: replayed from the allocation and
    free events of the PyTorch profiler, so it does not depend on how the C allocator reuses memory."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak / 2**20


def peak_cuda_mib(fn) -> float:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`medp serve MODEL` on a free loopback port, logging to ``log`` -> (process, url) once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medp_cli", "serve", str(model), "--port", str(port),
                             "--max-model-len", "2048", *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("the server did not come up in 10 minutes") from None
            time.sleep(1)
