"""The chat app reaches the model over HTTP only: its process imports neither torch nor
transformers (DESIGN.md §6). The app script runs for real (Streamlit's AppTest) in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"

PROBE = f"""
import json, sys, time
start = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(APP)!r}, default_timeout=120).run()
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - start, "rss_mib": peak / 1024,
                  "heavy": sorted(m for m in ("torch", "transformers", "vllm", "assistant", "vision_tower")
                                  if m in sys.modules),
                  "exception": [str(e.value) for e in at.exception]}}))
"""


def test_the_app_process_imports_neither_torch_nor_transformers():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         cwd=APP.parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"the app's first run in a fresh process: {report['seconds']:.1f} s, peak RSS {report['rss_mib']:.0f} MiB")
    assert report["exception"] == [] and report["heavy"] == [], report
