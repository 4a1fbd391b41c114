"""Shared test setup: offline, deterministic, small thread count."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable

# No network in tests: hub lookups fail fast, W&B writes locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models run fastest on one thread, and one thread does not fight a second process
# (the DDP test, a notebook kernel) on a 2-core machine.
torch.set_num_threads(1)

#: ../shared/fixtures/real next to the repository (CI puts ../shared beside the clone).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.extra("module")``: skip where an optional extra is not installed.

    ``make test`` installs every extra and sets ``PIXELKIT_ALL_EXTRAS=1``: there a missing
    one is a failure, so the full suite never skips silently. The min-versions job installs
    the core only and skips these tests.
    """
    from pixelkit.optional import available

    for mark in item.iter_markers("extra"):
        module = mark.args[0]
        if not available(module):
            if os.environ.get("PIXELKIT_ALL_EXTRAS") == "1":
                pytest.fail(f"{module} is not installed, but this environment should have "
                            "every extra (make setup)")
            pytest.skip(f"needs {module} (an optional extra), not installed here")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"real-data fixtures not found at {FIXTURES} (../shared missing?)")
    return FIXTURES


@pytest.fixture
def png_header() -> Callable[[Path, tuple[int, int]], Path]:
    """Writes a PNG whose header declares a size (width, height) over almost no pixel
    data: the shape of a decompression bomb, without the memory cost of a real one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    def write(path: Path, size: tuple[int, int]) -> Path:
        ihdr = struct.pack(">IIBBBBB", size[0], size[1], 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\0" * 16)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        )
        return path

    return write


@pytest.fixture
def tiny_sam_vision() -> dict:
    """SamVisionConfig fields of a 2-block SAM ViT (64 px, patch 16, 16 output channels)."""
    return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64,
            "output_channels": 16, "image_size": 64, "patch_size": 16, "window_size": 2,
            "global_attn_indexes": [1], "num_pos_feats": 16}


@pytest.fixture
def tiny_sam():
    """A random ``transformers.SamModel`` small enough for CPU tests (64 px input)."""
    from pixelkit.tutorial import random_tiny_sam

    return random_tiny_sam()
