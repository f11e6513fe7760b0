"""DeepSpeed's compiled CPU ops: where they are built, building them ahead of use, stale build locks.

DeepSpeed JIT-compiles its C++ ops (the shared-memory all-reduce of CPU ranks, CPU Adam for ZeRO-Offload)
through ``torch.utils.cpp_extension``. Every first load in a process takes a ``lock`` file in the op's
build folder, even when nothing needs rebuilding, and a process that finds the lock waits for it forever.
A run killed while it held the lock therefore hangs every later run (measured: a CI run hung this way).
So the ops are built inside the virtual environment (``TORCH_EXTENSIONS_DIR`` defaults to
``<venv>/torch_extensions``, which a fresh environment starts without and other environments never share),
``scripts/setup.sh`` builds them once with ``python -m train_sft.ops``, and a lock older than any build
is removed with a warning before DeepSpeed starts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_LOCK_S = 15 * 60  # building an op takes about a minute on two cores
CPU_OPS = ("ShareMemCommBuilder", "CPUAdamBuilder")


def extensions_dir() -> Path:
    """``TORCH_EXTENSIONS_DIR``, set to ``<venv>/torch_extensions`` unless the user chose a folder (or the
    environment's prefix is read-only, where torch's per-user default stays)."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))


def clear_stale_locks(max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """Remove op build locks older than ``max_age_s`` (left by killed builds); returns those removed."""
    removed = []
    for lock in extensions_dir().rglob("lock"):
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        if age >= max_age_s:
            log.warning("removing a stale build lock %s (%.0f s old, left by a killed build)", lock, age)
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


def build_cpu_ops() -> None:
    """Build the CPU ops now, in this one process (setup runs this; nothing else is building)."""
    clear_stale_locks(max_age_s=0)
    from deepspeed.accelerator import get_accelerator  # lazy: DeepSpeed: +0.8 s, only for its engine

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        return
    for name in CPU_OPS:
        started = time.perf_counter()
        accelerator.create_op_builder(name).load(verbose=False)
        print(f"setup: DeepSpeed op {name} ready in {time.perf_counter() - started:.0f} s "
              f"({extensions_dir()})")


if __name__ == "__main__":
    build_cpu_ops()
