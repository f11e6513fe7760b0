"""A training that shares the machine can take the cores back: started on fewer threads than there are
cores (``OMP_NUM_THREADS=1`` beside another job), it takes every core it may run on when sent SIGUSR1
(``kill -USR1 PID``), between two optimizer steps. The default recipe's last step trains this way beside
the mask decoder and the grounding head and is signalled when they are done
(``recipes/default_model/run.sh``).

Why one thread each and not two: an OpenMP pool waits on cores the other job needs; on the 2-core CPU two
2-thread trainings ran 4.5x slower than one alone, one thread each 1.3x faster than one after the other
(docs/training.md). A process keeps the thread count it started with unless it is told.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Callable

import torch

__all__ = ["CoreRequests", "available_cores"]


def available_cores() -> int:
    """The cores this process may run on, shared among the processes of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


class CoreRequests:
    """While open (``with CoreRequests() as cores:``), SIGUSR1 asks for every core; :meth:`take` grants a
    pending request. The previous handler comes back on exit. Nothing is installed outside the main
    thread or where there is no SIGUSR1 (Windows)."""

    def __init__(self) -> None:
        self._asked = False
        self._installed = False
        self._previous: Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> "CoreRequests":
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._ask)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGUSR1, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        self._asked = True  # granted by take(), between two steps, not inside an operation

    def take(self) -> tuple[int, int] | None:
        """Grant a pending request: -> (threads before, threads now), or None when nothing was asked."""
        if not self._asked:
            return None
        self._asked = False
        before = torch.get_num_threads()
        torch.set_num_threads(available_cores())
        return before, torch.get_num_threads()
