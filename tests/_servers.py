"""Servers in tests (``pixelkit demo``): started with a log file, waited for by readiness.

A loaded 2-core machine can take minutes to import torch and Gradio; a short fixed wait
fails there and a long one wastes time everywhere else. :func:`wait_until_serving` polls the
page until it answers, fails at once if the process died (showing its log), and gives up
only after a generous limit. The output goes to a file, not a pipe, so a chatty server can
never block on a full pipe buffer.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Seconds a server may take to start before the test fails (an idle machine needs ~15 s).
START_LIMIT_S = 600.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None, cwd=cwd)


def wait_until_serving(url: str, process: subprocess.Popen, log: Path,
                       limit_s: float = START_LIMIT_S, poll_s: float = 0.25) -> bytes:
    """Poll ``url`` until it answers; returns the body.

    Raises:
        RuntimeError: the process exited first, or the limit passed (the log is in the
            message).
    """
    deadline = time.monotonic() + limit_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {limit_s:.0f} s:\n"
                                   f"{log.read_text(errors='replace')[-4000:]}") from None
            time.sleep(poll_s)


def stop(process: subprocess.Popen) -> None:
    """Terminate a server, and kill it if it does not stop within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
