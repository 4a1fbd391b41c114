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
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

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
