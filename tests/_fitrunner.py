"""Run ``pixelkit`` commands in processes forked from a server that imported pixelkit once.

Importing torch, Lightning and transformers takes ~12 s on the 2-core CI machine; the
fault-injection tests start about a dozen ``pixelkit fit`` processes, so they fork them from
a ``multiprocessing`` fork server that preloads ``pixelkit.training`` instead. Each run is a
real process of its own (it can be SIGKILLed at any moment), with its output in a log file.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

#: Fork server context; the server imports these modules once, before forking.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["pixelkit.cli", "pixelkit.training", "_fitrunner"])


def _slow_save(marker: str, at: int) -> None:
    """Make the ``at``-th checkpoint write stop half-way (creating ``marker``) for good."""
    import io

    import pixelkit.checkpoint as ck

    real, calls = ck.atomic_save, [0]

    def slow(write: Any, path: Any) -> Any:
        calls[0] += 1
        if calls[0] != at:
            return real(write, path)

        def half(f: Any) -> None:
            buf = io.BytesIO()
            write(buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            Path(marker).touch()
            time.sleep(3600)

        return real(half, path)

    ck.atomic_save = slow


def _main(argv: list[str], log: str, slow_save: tuple[str, int] | None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    import torch

    torch.set_num_threads(1)
    if slow_save:
        _slow_save(*slow_save)
    from pixelkit.cli import main

    code = main(argv)
    if "wandb" in sys.modules:  # what its atexit hook would do: close the run's files
        sys.modules["wandb"].finish()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(argv: list[str], log: Path, slow_save: tuple[str, int] | None = None
          ) -> multiprocessing.Process:
    """Start ``pixelkit ARGV`` in a forked process; its output is appended to ``log``."""
    proc = CONTEXT.Process(target=_main, args=(list(argv), str(log), slow_save), daemon=True)
    proc.start()
    return proc
