"""What a clinician waits for in the chat app: from pressing Ask to the first character of the answer
on the screen, in Debian's chromium (Playwright) against `medp ui` (a real `streamlit run` and a real
`medp serve`), on the default model unless --model names another.

Each round opens a sample case the server has not seen and asks about its first region (a new image
with a new region), then asks a follow-up on the same image. The first round only warms the server
and the app and is not counted. Every wait is split where it goes, from the browser's clock and the
app's timing line in ui.log (both epoch time, one machine):

    press -> app run    the browser's click reaches Streamlit and a script run starts
    app run             the run draws the page (image, canvas, regions) and builds the request
    server TTFT         the request until the first streamed piece reaches the app
    to the screen       that piece travels to the browser and is drawn

    python benchmarks/ui_latency.py [--model default|DIR] [--rounds 4] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common import free_port  # noqa: E402

from ui.launch import start_in_background  # noqa: E402
from ui.sources import open_sample, sample_names  # noqa: E402

KEY = "ui-latency-key"
PARTS = ("press -> app run", "app run", "server TTFT", "to the screen")
TIMING = re.compile(r"answer timing: run (\S+) request (\S+) first (\S+) done (\S+)")

# Set before pressing Ask: the click's time, and the time the answer being streamed (the chat message
# with the Stop button) first shows a character of its own (not the button's label).
WATCH = """() => {
  window.medpTiming = {pressed: null, shown: null};
  document.querySelector('.st-key-send button').addEventListener(
    'click', () => { window.medpTiming.pressed = Date.now(); }, {once: true, capture: true});
  const observer = new MutationObserver(() => {
    for (const message of document.querySelectorAll('[data-testid="stChatMessage"]')) {
      if (![...message.querySelectorAll('button')].some(b => b.innerText.includes('Stop'))) continue;
      const text = [...message.querySelectorAll('[data-testid="stMarkdownContainer"]')]
        .filter(e => !e.closest('button')).map(e => e.innerText).join('');
      if (text.replace('▌', '').trim().length > 0) {
        window.medpTiming.shown = Date.now();
        observer.disconnect();
        return;
      }
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def start_ui(model: str, logs: Path) -> tuple[subprocess.Popen, str]:
    """`medp ui MODEL` on free loopback ports -> (the launcher, the app's URL) once it is ready."""
    ui_port = free_port()
    process, _ = start_in_background([model, "--port", str(free_port()), "--ui-port", str(ui_port),
                                      "--api-key", KEY, "--log", str(logs / "serve.log")])
    return process, f"http://127.0.0.1:{ui_port}"


def settle(page, expect) -> None:
    """Wait until the app has been idle for a second: a canvas that has just mounted reports its drawing,
    which starts one more script run; an Ask during it is cut off and asked again, timing two requests."""
    for _ in range(2):
        page.wait_for_timeout(1000)
        expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(0, timeout=120_000)


def ask(page, expect, question: str) -> dict:
    """Press Ask on ``question``; -> the browser's epoch ms of the press and of the first character."""
    page.get_by_label("Question").fill(question)
    page.get_by_label("Question").press("Enter")  # the text reaches the app in a run of its own, before Ask
    settle(page, expect)
    page.evaluate(WATCH)
    page.locator(".st-key-send button").click()
    page.wait_for_function("() => window.medpTiming.shown !== null", timeout=300_000)
    expect(page.get_by_role("button", name=re.compile("Stop"))).to_have_count(0, timeout=300_000)
    settle(page, expect)  # the answer is complete and the page redrawn
    return page.evaluate("() => window.medpTiming")


def open_case(page, expect, name: str) -> None:
    settle(page, expect)
    page.get_by_test_id("stSelectbox").filter(has_text="open a sample").locator("input").click()
    page.keyboard.type(name)  # the menu filters to the case as it is typed
    page.get_by_role("option", name=name).click()
    expect(page.get_by_text(open_sample(name).name)).to_be_visible(timeout=120_000)
    expect(page.get_by_text("<region1>", exact=False).first).to_be_visible(timeout=60_000)


def split(browser: dict, app_line: tuple[float, ...]) -> dict[str, float]:
    """The wait of one answer in seconds, part by part, and ``total``."""
    run, request, first, _ = app_line
    pressed, shown = browser["pressed"] / 1000, browser["shown"] / 1000
    parts = dict(zip(PARTS, (run - pressed, request - run, first - request, shown - first)))
    return {**parts, "total": shown - pressed}


def report(waits: dict[str, list[dict[str, float]]]) -> None:
    rounds = len(next(iter(waits.values())))
    print(f"\nPress Ask -> first character on the screen, median of {rounds} rounds (ms; each part is its own "
          "median, so the parts need not add up to the total)")
    print(f"{'request':32} {'total':>8} " + " ".join(f"{p:>17}" for p in PARTS))
    for kind, rows in waits.items():
        median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        cells = " ".join(f"{1000 * median[p]:9.0f} ({median[p] / median['total']:4.0%})" for p in PARTS)
        print(f"{kind:32} {1000 * median['total']:8.0f} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (the embedded model) or a checkpoint folder")
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds (a new case each)")
    parser.add_argument("--keep-logs", type=Path, help="copy serve.log and ui.log here")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    cases = [n for n in sample_names() if open_sample(n).regions][: args.rounds + 1]
    if len(cases) < args.rounds + 1:
        parser.error(f"--rounds: only {len(cases) - 1} sample cases with regions besides the warm-up one")
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("Debian chromium is not installed (scripts/browser.sh)")
    waits: dict[str, list[dict[str, float]]] = {"new image, new region": [], "follow-up, same image": []}
    with tempfile.TemporaryDirectory(prefix="medp-ui-latency-") as tmp:
        logs = Path(tmp)
        process, app_url = start_ui(args.model, logs)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.goto(app_url)
                page.get_by_label("API key").fill(KEY)
                page.get_by_label("API key").press("Enter")
                expect(page.get_by_text("Connected:")).to_be_visible(timeout=60_000)
                pressed = []
                for i, case in enumerate(cases):
                    open_case(page, expect, case)
                    pressed.append(ask(page, expect, "What is in <region1>?"))
                    pressed.append(ask(page, expect, "Is <region1> well-defined or ill-defined?"))
                    print(f"round {i} ({'warm-up' if i == 0 else 'counted'}): {case}", flush=True)
                browser.close()
            lines = [tuple(float(v) for v in m.groups()) for m in TIMING.finditer((logs / "ui.log").read_text())]
            if len(lines) != len(pressed):
                raise RuntimeError(f"{len(pressed)} answers but {len(lines)} timing lines in ui.log")
            for i, (browser_times, app_line) in enumerate(zip(pressed, lines)):
                if i >= 2:  # round 0 warms up
                    waits[list(waits)[i % 2]].append(split(browser_times, app_line))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for name in ("serve.log", "ui.log"):
                    if (logs / name).exists():
                        shutil.copy(logs / name, args.keep_logs / name)
    report(waits)


if __name__ == "__main__":
    main()
