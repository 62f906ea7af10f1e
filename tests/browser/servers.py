"""Real Jupyter servers and a headless Chromium on localhost, for the browser tests and ``benchmarks/widget.py``.

Nothing here needs pytest: a server that does not start raises :class:`RuntimeError` with the end of its log.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

TOKEN = "mmviz-test-token"

# Headless Chromium from Debian, with nothing that phones home (the machine's network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def jupyter_server(
    root: Path, *, app: Literal["lab", "notebook"] = "lab", startup_seconds: float = 90
) -> Iterator[str]:
    """A JupyterLab 4 (``app="lab"``) or Notebook 7 (``app="notebook"``) server on 127.0.0.1 serving ``root``
    with token :data:`TOKEN`; yields its base URL and stops it, with its kernels, afterwards. Its log is
    ``root / f"{app}.log"``."""
    port = free_port()
    command = [
        sys.executable, "-m", "jupyterlab" if app == "lab" else "notebook", "--no-browser", f"--port={port}",
        "--ip=127.0.0.1", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--allow-root",
    ]  # fmt: skip
    # A workspace of its own: JupyterLab would otherwise reopen the documents of an earlier session (404s).
    workspaces = root / ".workspaces"
    if app == "lab":
        command += [
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
            f"--LabApp.workspaces_dir={workspaces}",
        ]  # fmt: skip
    else:
        command += [
            "--JupyterNotebookApp.expose_app_in_browser=True",
            f"--JupyterNotebookApp.workspaces_dir={workspaces}",
        ]
    log_path = root / f"{app}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + startup_seconds
            while True:
                try:
                    urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                    break
                except OSError as error:
                    if server.poll() is not None:
                        raise RuntimeError(f"Jupyter exited: {log_path.read_text()[-2000:]}") from error
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Jupyter did not start within {startup_seconds:.0f} s") from error
                    time.sleep(0.5)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=20)


def notebook(cells: list[str]) -> str:
    """A minimal ``.ipynb`` (JSON) of code cells."""
    import json

    return json.dumps(
        {
            "cells": [
                {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
                for source in cells
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


KERNEL_IDLE_JS = """() => {
    const app = window.jupyterapp;
    const kernel = app?.shell.currentWidget?.sessionContext?.session?.kernel;
    return kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
"""True once the current notebook's kernel is connected and idle (JupyterLab 4 and Notebook 7 expose
``window.jupyterapp`` with ``expose_app_in_browser``)."""

RUN_ALL_JS = "() => window.jupyterapp.commands.execute('notebook:run-all-cells')"
