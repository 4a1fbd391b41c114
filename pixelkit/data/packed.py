"""Samples packed into one numpy byte buffer, so that memory does not grow with workers.

A Python list of :class:`~pixelkit.data.schema.Sample` objects costs a few hundred bytes
of object headers per sample and, worse, every data-loader worker that *reads* a sample
touches its reference counts, so the pages of the list are copied into each forked worker
one by one (PyTorch's "copy-on-read" problem, pytorch/pytorch#13246). detectron2 stores its
dataset as serialized bytes in one numpy array instead (``NumpySerializedList``); so does
this module, with a plain encoding rather than pickle (nothing executable is ever decoded):

    one sample = [u32 header length][JSON header][boxes f32][utterance_boxes f32]
                 [utterance_points f32]

The header holds the strings, ids and ``extra`` (JSON values: every reader builds them from
JSON records) and the three arrays' row counts. Two numpy arrays hold everything: the bytes
(``uint8``) and the offsets (``int64``). They are shared, untouched, by forked workers, and
pickle as two buffers for spawned ones.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from pixelkit.data.schema import Sample

__all__ = ["PackedSamples", "decode_sample", "encode_sample"]

_LEN = struct.Struct("<I")
_ARRAYS = (("boxes", 4), ("utterance_boxes", 4), ("utterance_points", 2))


def encode_sample(sample: Sample) -> bytes:
    """One sample as bytes (:func:`decode_sample` gives it back, equal field by field)."""
    header = {
        "image_path": sample.image_path, "image_size": list(sample.image_size),
        "task": sample.task, "text": sample.text, "box_texts": sample.box_texts,
        "utterances": sample.utterances, "image_id": sample.image_id,
        "ann_id": sample.ann_id, "source": sample.source, "extra": sample.extra,
        "rows": [len(getattr(sample, name)) for name, _ in _ARRAYS],
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    arrays = b"".join(np.ascontiguousarray(getattr(sample, name), np.float32).tobytes()
                      for name, _ in _ARRAYS)
    return _LEN.pack(len(head)) + head + arrays


def decode_sample(buf: bytes | memoryview) -> Sample:
    """The sample of :func:`encode_sample`'s bytes."""
    (n,) = _LEN.unpack_from(buf, 0)
    header = json.loads(bytes(buf[_LEN.size:_LEN.size + n]))
    pos = _LEN.size + n
    arrays = {}
    for (name, cols), rows in zip(_ARRAYS, header.pop("rows")):
        count = rows * cols
        # A copy: the sample is the caller's to change, the buffer stays read-only.
        arrays[name] = np.frombuffer(buf, np.float32, count, pos).reshape(rows, cols).copy()
        pos += 4 * count
    header["image_size"] = tuple(header["image_size"])
    return Sample(**header, **arrays)


class PackedSamples(Sequence[Sample]):
    """A read-only sequence of samples stored as one byte buffer and its offsets.

    Built from any iterable (a streaming reader's generator: the samples are encoded as
    they come, so the list of objects never exists). Indexing decodes one sample (a few
    microseconds); iterating decodes them in order.

    Args:
        samples: the samples, in order.

    Example::

        packed = PackedSamples(sample_iterator)
        len(packed), packed[0].text, packed.nbytes
    """

    def __init__(self, samples: Iterable[Sample]) -> None:
        data = bytearray()
        ends: list[int] = []
        for s in samples:
            data += encode_sample(s)
            ends.append(len(data))
        self._bytes = np.frombuffer(bytes(data), np.uint8)  # bytes: read-only, one copy
        self._offsets = np.zeros(len(ends) + 1, np.int64)
        self._offsets[1:] = ends
        self._folder: Path | None = None  # set when memory-mapped from a saved folder

    # ------------------------------------------------------------------ on disk
    def save(self, folder: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
        """Write ``samples.npy``, ``offsets.npy`` and ``meta.json`` into ``folder``,
        atomically (a temporary folder renamed into place: it exists whole or not at all).

        Raises:
            OSError: the parent folder is not writable.
        """
        folder = Path(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            np.save(tmp / "samples.npy", self._bytes)
            np.save(tmp / "offsets.npy", self._offsets)
            (tmp / "meta.json").write_text(json.dumps({**meta, "samples": len(self)}))
            os.replace(tmp, folder)  # fails if another process saved it first: theirs stays
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "meta.json").is_file():
                raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> tuple[PackedSamples, dict[str, Any]]:
        """The samples of :meth:`save`, memory-mapped read-only (nothing is read until a
        sample is: the page cache holds the bytes once for every process), and the meta."""
        folder = Path(folder)
        self = cls.__new__(cls)
        self._bytes = np.load(folder / "samples.npy", mmap_mode="r")
        self._offsets = np.load(folder / "offsets.npy")
        self._folder = folder
        return self, json.loads((folder / "meta.json").read_text())

    def head(self, n: int) -> PackedSamples:
        """The first ``n`` samples, sharing this buffer (a source's ``limit``)."""
        out = self.__class__.__new__(self.__class__)
        out._bytes, out._folder = self._bytes, self._folder
        out._offsets = self._offsets[: min(n, len(self)) + 1]
        return out

    def __getstate__(self) -> dict[str, Any]:
        # A memory-mapped one travels to a spawned worker as its folder, not its bytes.
        if self._folder is not None:
            return {"folder": str(self._folder), "samples": len(self)}
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "folder" in state:
            state = PackedSamples.load(state["folder"])[0].head(state["samples"]).__dict__
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        index %= n
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return decode_sample(memoryview(self._bytes)[start:end])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes held: the buffer and its offsets."""
        return int(self._bytes.nbytes + self._offsets.nbytes)

    def __repr__(self) -> str:
        return f"PackedSamples({len(self)} samples, {self.nbytes / 2**20:.1f} MiB)"
