"""``medp ui``: the server and the app together, the README's main command.

Starts ``medp serve`` (the embedded default model unless another is named; assembled at first use),
waits until it answers, starts the Streamlit app against it, prints the address, and on Ctrl-C (or
SIGTERM) stops both. With ``--server URL`` only the app starts, against that server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from medp_base.limits import MAX_UPLOAD_MB
from medp_base.network import KEY_ENV, is_loopback

APP = Path(__file__).resolve().parent / "app.py"


READY = "MedP is ready"  # the line `medp ui` prints once the server and the app both answer


def start_in_background(arguments: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """``medp ui ARGUMENTS`` as a child process in a session of its own (SIGTERM to it stops the server
    and the app); -> (the process, the lines it printed) once it is ready. Raises RuntimeError with
    what it printed if it stops first."""
    process = subprocess.Popen([sys.executable, "-m", "medp_cli", "ui", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed = []
    for line in process.stdout:
        printed.append(line)
        if READY in line:
            return process, printed
    process.wait()
    raise RuntimeError(f"medp ui stopped (exit code {process.returncode}):\n" + "".join(printed)[-3000:])


def add_ui_parser(sub) -> None:
    ui = sub.add_parser("ui", help="the chat app in the browser, with a server for it (Ctrl-C stops both)")
    ui.add_argument("model", nargs="?", default="default",
                    help="a MedP checkpoint folder to serve (default: the embedded default model)")
    ui.add_argument("--server", help="use this running server (e.g. http://127.0.0.1:8000) instead of starting one")
    ui.add_argument("--host", default="127.0.0.1", help="interface both bind to (default: loopback only)")
    ui.add_argument("--port", type=int, default=8000, help="the server's port")
    ui.add_argument("--ui-port", type=int, default=8501, help="the app's port")
    ui.add_argument("--api-key", default=os.environ.get(KEY_ENV),
                    help=f"require this key (default: ${KEY_ENV})")
    ui.add_argument("--allow-no-key", action="store_true",
                    help="bind a non-loopback --host although the app has no login (a trusted network only)")
    ui.add_argument("--log", type=Path, default=Path("out/serve.log"),
                    help="the server's log (the app's goes beside it, ui.log)")
    ui.add_argument("--wait", type=float, default=900, help="seconds to wait for the server to come up")
    ui.set_defaults(run=run_ui, passes_extra=True)  # other options go to medp serve


def _wait_for(url: str, process: subprocess.Popen, what: str, seconds: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200, showing a spinner; stop early if ``process`` exits."""
    deadline, frames = time.monotonic() + seconds, "|/-\\"
    start = time.monotonic()
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} stopped (exit code {process.returncode}). Last lines of {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    print(f"\r{what}: ready after {time.monotonic() - start:.0f} s    ", flush=True)
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {seconds:.0f} s")
        print(f"\r{what}: starting {frames[int(time.monotonic() * 4) % 4]} {time.monotonic() - start:4.0f} s",
              end="", flush=True)
        time.sleep(0.5)


def _stop(*processes: subprocess.Popen | None, grace: float = 30) -> None:
    """SIGTERM the process groups all at once; SIGKILL those still running ``grace`` seconds later
    (so stopping the app and the server takes at most ``grace``, not their sum)."""
    live = [p for p in processes if p is not None and p.poll() is None]
    for process in live:
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in live:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run_ui(args: argparse.Namespace, extra: list[str]) -> int:
    """Start the server (unless --server) and the app; block until Ctrl-C; stop both."""
    server = app = None
    url = args.server or f"http://{args.host}:{args.port}"
    if not is_loopback(args.host) and not args.allow_no_key:
        print(f"medp ui: error: refusing to serve the chat app on {args.host}: the app has no login of its own, so "
              "anyone who reaches it can use the model and see the images. Keep it on 127.0.0.1 (reach it through "
              "an SSH tunnel or an authenticating reverse proxy), or pass --allow-no-key if the network is trusted",
              file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both stop the app and the server. SIGINT explicitly too: a process started
    # from a non-interactive shell's background job (nohup ... &, a CI step) inherits SIGINT as
    # ignored, and Python then installs no handler of its own (measured: the browser test's Ctrl-C
    # went unanswered for 90 s under `nohup pytest &`).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        if args.server is None:
            args.log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "medp_cli", "serve", str(args.model), "--host", args.host,
                       "--port", str(args.port), *(["--allow-no-key"] if args.allow_no_key else []), *extra]
            server_env = {k: v for k, v in os.environ.items() if k != KEY_ENV}  # the key: never on a command line
            if args.api_key:
                server_env[KEY_ENV] = args.api_key
            default = args.model == "default"
            what = "the default model (assembled at first use, about a minute)" if default else args.model
            print(f"MedP: serving {what} at {url}; its log is {args.log}", flush=True)
            with open(args.log, "ab") as log:
                server = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            _wait_for(f"{url}/health", server, "server", args.wait, args.log)
        env = {**os.environ, "MEDP_SERVER_URL": url, "MEDP_MODEL": "medp-default" if args.model == "default"
               else Path(args.model).name}
        if args.api_key:
            env[KEY_ENV] = args.api_key
        app_url = f"http://{args.host}:{args.ui_port}"
        app_log = args.log.with_name("ui.log")
        with open(app_log, "ab") as log:
            app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", args.host,
                                    "--server.port", str(args.ui_port), "--server.headless", "true",
                                    "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
                                    "--client.toolbarMode", "minimal", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
                                    # no file watcher: it walks every imported module (and logged a traceback
                                    # per module it could not inspect: 1,030 in one short session)
                                    "--server.fileWatcherType", "none", "--server.runOnSave", "false"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(f"{app_url}/_stcore/health", app, "app", 120, app_log)
        print(f"\n{READY}: open {app_url} in a browser (server {url}). Ctrl-C stops both.\n", flush=True)
        while server is None or server.poll() is None:
            if app.poll() is not None:
                raise RuntimeError(f"the app stopped (exit code {app.returncode}); see {app_log}")
            time.sleep(1)
        raise RuntimeError(f"the server stopped (exit code {server.returncode}); see {args.log}")
    except KeyboardInterrupt:
        print("\nMedP: stopping the app and the server…", flush=True)
        return 0
    except RuntimeError as e:
        print(f"medp ui: error: {e}", file=sys.stderr)
        return 1
    finally:
        _stop(app, server)
        if server is not None or app is not None:
            print("MedP: stopped.", flush=True)
