"""pixelkit.runtime: glibc keeps freed buffers, so repeated batched passes stop page-faulting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from pixelkit.runtime import ENV_VAR, keeps_freed_memory, retain_freed_memory

# Rounds of 16 one-MiB buffers allocated, written and freed, as a batched forward pass
# does with its activations; prints the minor page faults of the last 10 rounds.
_PATTERN = """
import resource, sys, numpy as np
if sys.argv[1] == "1":
    from pixelkit.runtime import retain_freed_memory
    assert retain_freed_memory()
def one_round():
    bufs = [np.ones(1 << 18, np.float32) for _ in range(16)]
    del bufs
for _ in range(3):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(retain: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _PATTERN, "1" if retain else "0"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_retained_memory_is_reused_without_page_faults() -> None:
    # Default glibc: the 16 MiB freed at the top of the heap exceed the trim threshold and
    # go back to the kernel, so every round faults its 4,096 pages in again.
    default, retained = _faults(False), _faults(True)
    assert default > 10 * 4096 // 2, default
    assert retained < 200, retained


def test_opt_out_and_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "0")
    assert retain_freed_memory() is False
    monkeypatch.delenv(ENV_VAR)
    applied = retain_freed_memory()
    assert applied == (platform.libc_ver()[0] == "glibc")
    assert keeps_freed_memory() is applied
