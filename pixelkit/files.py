"""Atomic writes: a file is either its old content or its new content, never half of either.

Every checkpoint and result file pixelkit writes goes through :func:`atomic_write`: the
content is written to a temporary file *in the target's own folder* (so the final rename
never crosses a filesystem and stays atomic), flushed and ``fsync``-ed, then renamed over
the target with :func:`os.replace`, and the folder entry is ``fsync``-ed too. A process
killed at any moment leaves at most a temporary file named ``.<name>.<random>.partial``,
which :func:`remove_partial_files` cleans up; the target itself is never truncated.

(Lightning's own checkpoint save goes through fsspec, which writes to a temporary file in
``$TMPDIR`` and moves it: on another filesystem that move is a copy, and a kill during the
copy leaves a half-written ``last.ckpt``. :class:`pixelkit.checkpoint.AtomicCheckpointIO`
replaces it.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: Suffix of the temporary files of :func:`atomic_write` (hidden, beside their target).
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    ::

        with atomic_write("metrics.json", "w") as f:
            json.dump(metrics, f)

    On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results private
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_save(write: Callable[[IO[bytes]], Any], path: str | os.PathLike[str]) -> Path:
    """``write(file)`` into a temporary file that then replaces ``path`` atomically.

    ``atomic_save(lambda f: torch.save(obj, f), path)`` is ``torch.save(obj, path)``
    without a half-written ``path`` after a kill.
    """
    with atomic_write(path, "wb") as f:
        write(f)
    return Path(path)


def remove_partial_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``folder``.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f".*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def check_writable_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written as a file.

    Raises:
        ValueError: ``path`` is a folder, or its folder cannot be created or written to.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot create its folder ({err.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path}: not writable")
    return path
