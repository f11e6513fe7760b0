"""The layers of DESIGN.md §6 are a contract, not a wish: `lint-imports` checks pyproject's
[tool.importlinter] contracts (one direction of imports; no torch in the base or the chat app)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_and_the_base_loads_no_torch():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout
