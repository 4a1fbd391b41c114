"""Shared plumbing of the format readers: field checks, box checks, image lookup, skipping.

Every reader follows the same rules (DESIGN section 7, "every bad input gets a clear
error that names the file, line or field"):

* a record that cannot be read raises :class:`DataFormatError` naming the file, the line
  (JSON lines, 1-based) or record index (JSON), and the field, when ``strict=True``;
  with ``strict=False`` it is skipped, its message kept in ``report.errors`` and the
  reason counted in ``report.counts``;
* a box partly outside the image is clipped to it and counted (``clipped_boxes``);
* a box with zero area (after clipping) is rejected like any bad record
  (reason ``zero_area_boxes``);
* a missing or unreadable image is reported by file name (reason ``missing_images``); an
  image whose header declares more pixels than PIL's decompression-bomb limit
  (``PIL.Image.MAX_IMAGE_PIXELS``; PIL's warning level counts too) is refused the same
  way (reason ``bomb_images``);
* numbers must be finite and fit a float (a 400-digit integer is a field error, not an
  ``OverflowError``); ids are integers of at most 64 bits or non-empty strings;
* JSON nested too deeply for the parser, or holding an integer too long to convert, is an
  error of its line (JSON lines) or of the whole file (JSON), never a raw traceback;
* **duplicate ids: the first record that carries an id keeps it; every later record
  with the same id is a bad record** (strict: a DataFormatError naming both places; not
  strict: skipped and counted under ``duplicate_<kind>_ids``, e.g.
  ``duplicate_annotation_ids``). A record owns its id even when it is skipped for another
  reason, so a file given twice (or records repeated in it) never doubles the samples.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.data.schema import DataFormatError, ReadReport, Sample

#: JSON scalar types accepted where a number is expected (bool is excluded explicitly,
#: because ``isinstance(True, int)`` is true in Python).
_NUMBER = (int, float)


# --------------------------------------------------------------------------- errors


class MissingImageError(DataFormatError):
    """An image that a reader needs (for its size, or because ``check_images=True``)
    is missing or cannot be opened; the message names the file.

    Attributes:
        path: the image file, when known (the data module counts bad images by file).
    """

    reason = "missing_images"
    path: str | None = None


class ZeroAreaBoxError(DataFormatError):
    """A box with no area (width or height 0 after clipping to the image)."""

    reason = "zero_area_boxes"


class BombImageError(MissingImageError):
    """An image whose header declares more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``); it is refused before any pixel is decoded."""

    reason = "bomb_images"


class TruncatedImageError(MissingImageError):
    """An image whose header reads but whose pixel data is cut short or corrupt (only
    found by decoding it, see :func:`decode_image`)."""

    reason = "truncated_images"


class DuplicateIdError(DataFormatError):
    """A record repeats the id of an earlier record (the earlier one is kept).

    Args:
        message: the error message (names both records).
        kind: what the id identifies (``"annotation"``, ``"image"``, ...); the reason it is
            counted under is ``duplicate_<kind>_ids``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.reason = f"duplicate_{kind}_ids"


def reason_of(exc: DataFormatError) -> str:
    """The ``report.counts`` key a skipped record is counted under."""
    return getattr(exc, "reason", "malformed_records")


class Collector:
    """The report of one read plus the strict / skip policy.

    Args:
        path: the file being read (named in every message).
        fmt: the format name stored in the report.
        strict: raise on the first bad record (True) or skip and count it (False).
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str, strict: bool) -> None:
        self.path = str(path)
        self.strict = strict
        self.report = ReadReport(path=self.path, format=fmt)
        # Fix-ups noted while reading the current record; they only reach the report if
        # the record is kept (ok()), so a skipped record does not also count as clipped.
        self._pending: dict[str, int] = {}

    def bad(self, exc: DataFormatError, n: int = 1) -> None:
        """Handle a bad record: raise it (strict) or skip ``n`` records and count why.

        ``n`` > 1 when one failure takes several records with it (e.g. a missing image
        takes all the regions drawn on it); the message is kept once.
        """
        self._pending.clear()
        if self.strict:
            raise exc
        self.report.skip(str(exc))
        self.report.skipped += n - 1
        self.report.count(reason_of(exc), n)
        if getattr(exc, "path", None):
            self.report.bad_images.setdefault(exc.path, str(exc))

    def note(self, key: str, n: int = 1) -> None:
        """Count a fix-up made to the current record (kept only if the record is)."""
        if n:
            self._pending[key] = self._pending.get(key, 0) + n

    def ok(self) -> None:
        """The current record was read: count it and its fix-ups."""
        self.report.records += 1
        for key, n in self._pending.items():
            self.report.count(key, n)
        self._pending.clear()

    def count(self, key: str, n: int = 1) -> None:
        """Count something about the file right away (not tied to one record)."""
        if n:
            self.report.count(key, n)


class FirstIds:
    """The ids seen so far in one file, for the keep-the-first rule of duplicate ids.

    Args:
        kind: what the ids identify, used in messages and in the counter name
            (``duplicate_<kind>_ids``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._first: dict[Any, str] = {}

    def claim(self, key: Any, where: str, field: str) -> None:
        """Record that the record at ``where`` carries id ``key``.

        Raises:
            DuplicateIdError: an earlier record already carries it.
        """
        first = self._first.get(key)
        if first is not None:
            raise DuplicateIdError(
                f"{where}: field {field!r}: duplicate {self.kind} id {show(key)} (first at "
                f"{first}, which is kept)",
                self.kind,
            )
        self._first[key] = where


# --------------------------------------------------------------------------- loading


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a whole JSON file; a syntax error names the file, line and column.

    Raises:
        DataFormatError: the file is not valid JSON (or not UTF-8).
        FileNotFoundError: the file does not exist.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise DataFormatError(f"{path}: {json_problem(e)}") from None


def json_problem(exc: ValueError | RecursionError) -> str:
    """Say why ``json.loads`` failed on text that is not plain invalid JSON.

    Python's parser recurses once per nesting level (``RecursionError`` past about a
    thousand levels) and refuses integers of more than ``sys.get_int_max_str_digits()``
    digits (``ValueError``); both are input problems, not bugs.
    """
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read (lists or objects inside each other)"
    return f"not readable JSON ({exc})"


try:  # 3-4x faster on trace-heavy narrative lines (the ``fast`` extra); else the stdlib
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None


def parse_json_line(line: str, where: str) -> Any:
    """``json.loads`` of one line; every failure is a DataFormatError naming ``where``.

    With ``orjson`` installed it parses first; on any line it refuses (NaN literals,
    integers beyond 64 bits, invalid JSON) the standard library parses again, so the result
    and the error message are always ``json.loads``'s.
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(line)
        except ValueError:  # orjson.JSONDecodeError: the stdlib decides (and explains)
            pass
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{where}: line is not valid JSON ({e.msg} at column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        raise DataFormatError(f"{where}: {json_problem(e)}") from None


def iter_jsonl(
    path: str | os.PathLike[str], col: Collector
) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each line of a JSON-lines file (1-based).

    A line that is not a JSON object goes through ``col.bad`` (raised when strict);
    blank lines are not records but are counted (``blank_lines``) so nothing is hidden.
    """
    with open(path, encoding="utf-8", errors="strict") as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                # Decoding happens in chunks, so the line number is approximate here.
                raise DataFormatError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                col.count("blank_lines")
                continue
            try:
                obj = parse_json_line(line, f"{path}:{lineno}")
            except DataFormatError as e:
                col.bad(e)
                continue
            if not isinstance(obj, dict):
                col.bad(
                    DataFormatError(
                        f"{path}:{lineno}: line is a JSON {type(obj).__name__}, expected an object"
                    )
                )
                continue
            yield lineno, obj


# --------------------------------------------------------------------------- fields


#: Bounded repr for messages: a field may hold a huge or deeply nested value, whose full
#: repr would be slow, enormous or a RecursionError.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 6
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60


def show(value: Any, limit: int = 60) -> str:
    """A short repr of any value for an error message (bounded in length and depth)."""
    try:
        text = _REPR.repr(value)
    except ValueError:
        # An int with more digits than Python converts to text (sys.get_int_max_str_digits).
        text = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get(record: Any, key: str, where: str, *, field: str | None = None) -> Any:
    """``record[key]``, or a DataFormatError naming ``where`` and the field."""
    name = field or key
    if not isinstance(record, dict):
        raise DataFormatError(
            f"{where}: expected an object with field {name!r}, got {show(record)}"
        )
    if key not in record:
        raise DataFormatError(f"{where}: field {name!r} is missing")
    return record[key]


def get_number(record: Any, key: str, where: str, *, field: str | None = None) -> float:
    """A finite number field (int or float, not bool)."""
    return as_number(get(record, key, where, field=field), where, field or key)


def as_number(value: Any, where: str, field: str) -> float:
    """``value`` as a finite float; anything else is a DataFormatError naming the field."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise DataFormatError(f"{where}: field {field!r} must be a number, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range, e.g. 400 digits of JSON
        raise DataFormatError(
            f"{where}: field {field!r} is too large for a number, got {show(value)}"
        ) from None
    if not math.isfinite(number):
        raise DataFormatError(f"{where}: field {field!r} must be finite, got {number!r}")
    return number


def get_str(
    record: Any, key: str, where: str, *, field: str | None = None, nonempty: bool = True
) -> str:
    """A string field, stripped; empty strings are refused unless ``nonempty=False``."""
    name = field or key
    value = get(record, key, where, field=name)
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {name!r} must be a string, got {show(value)}")
    value = value.strip()
    if nonempty and not value:
        raise DataFormatError(f"{where}: field {name!r} is empty")
    return value


#: Integer ids must fit in 64 bits: they end up in numpy / torch arrays and JSON results.
_ID_RANGE = (-(2**63), 2**63 - 1)


def get_id(record: Any, key: str, where: str, *, field: str | None = None) -> int | str:
    """An id field: an int (64 bits at most) or a non-empty string (COCO uses ints, LN
    strings)."""
    name = field or key
    value = get(record, key, where, field=name)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise DataFormatError(
            f"{where}: field {name!r} must be an integer or a non-empty string, got {show(value)}"
        )
    if isinstance(value, int) and not _ID_RANGE[0] <= value <= _ID_RANGE[1]:
        raise DataFormatError(
            f"{where}: field {name!r} is an integer id beyond 64 bits, got {show(value)}"
        )
    return value


def get_flag(record: Any, key: str, where: str, default: bool = False) -> bool:
    """A 0/1 flag such as COCO's ``iscrowd``: 0, 1, true, false, or those as strings
    ("0", "1", "true", "false", any case); a missing field is ``default``."""
    if not isinstance(record, dict) or key not in record:
        return default
    value = record[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _FLAG_WORDS:
        return _FLAG_WORDS[value.strip().lower()]
    raise DataFormatError(
        f"{where}: field {key!r} must be 0 or 1 (or true / false), got {show(value)}"
    )


_FLAG_WORDS = {"0": False, "1": True, "false": False, "true": True}


def get_list(record: Any, key: str, where: str, *, field: str | None = None) -> list[Any]:
    name = field or key
    value = get(record, key, where, field=name)
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: field {name!r} must be a list, got {show(value)}")
    return value


#: Largest image side accepted (PNG's limit; JPEG's is 65535). Larger "sizes" are
#: corrupt fields, and would overflow the float32 boxes.
MAX_IMAGE_SIDE = 2**31 - 1


def get_size(record: Any, where: str) -> tuple[int, int]:
    """``(width, height)`` from COCO-style ``width`` / ``height`` fields (positive)."""
    size = []
    for key in ("width", "height"):
        value = get_number(record, key, where)
        if not 0 < value <= MAX_IMAGE_SIDE or value != int(value):
            raise DataFormatError(
                f"{where}: field {key!r} must be a positive integer (at most {MAX_IMAGE_SIDE}), "
                f"got {value!r}"
            )
        size.append(int(value))
    return size[0], size[1]


# --------------------------------------------------------------------------- boxes


def xywh_box(value: Any, where: str, field: str = "bbox") -> list[float]:
    """A ``[x, y, w, h]`` list of four finite numbers, returned as floats."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataFormatError(
            f"{where}: field {field!r} must be a list of 4 numbers, got {show(value)}"
        )
    return [as_number(v, where, f"{field}[{i}]") for i, v in enumerate(value)]


def check_box_xyxy(
    box: Sequence[float], size: tuple[int, int] | None, where: str, col: Collector, field: str
) -> np.ndarray:
    """Clip an xyxy pixel box to the image and refuse it when no area is left.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels.
        size: ``(width, height)`` of the image; None when unknown (no clipping).
        where: record location for messages.
        col: collector (``clipped_boxes`` is counted there).
        field: the field the box came from, for messages.

    Returns:
        ``(4,)`` float32 box, clipped.

    Raises:
        ZeroAreaBoxError: width or height is not positive before or after clipping.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ZeroAreaBoxError(
            f"{where}: field {field!r} is a box with zero area "
            f"(width {x1 - x0:g}, height {y1 - y0:g})"
        )
    if size is not None:
        w, h = size
        cx0, cy0 = min(max(x0, 0.0), w), min(max(y0, 0.0), h)
        cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
        if not (cx1 > cx0 and cy1 > cy0):
            raise ZeroAreaBoxError(
                f"{where}: field {field!r} box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] (xyxy) lies "
                f"outside the {w}x{h} image (zero area after clipping)"
            )
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            col.note("clipped_boxes")
        x0, y0, x1, y1 = cx0, cy0, cx1, cy1
    if not max(abs(x0), abs(y0), abs(x1), abs(y1)) < _FLOAT32_MAX:
        # Only reachable without a size to clip to: x + w can overflow, or pass float32.
        raise DataFormatError(
            f"{where}: field {field!r} box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] (xyxy) is out of range"
        )
    return np.array([x0, y0, x1, y1], np.float32)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def xywh_to_checked_xyxy(
    value: Any, size: tuple[int, int] | None, where: str, col: Collector, field: str = "bbox"
) -> np.ndarray:
    """Parse an absolute ``[x, y, w, h]`` box, convert to xyxy, clip and check it."""
    x, y, w, h = xywh_box(value, where, field)
    return check_box_xyxy((x, y, x + w, y + h), size, where, col, field)


# --------------------------------------------------------------------------- images


class ImageSizes:
    """Reads image sizes from file headers, once per path, optionally kept in an index file.

    ``PIL.Image.open`` parses only the header, but at 100k images that is still minutes on
    a network filesystem. With an ``index`` (:meth:`beside` an annotation file), sizes
    read once are saved there (:meth:`save`) and later runs take them from it: an entry
    counts while the file's modification time and byte size are those it was read with
    (one ``stat``, no open).

    Args:
        index: the JSON index file, or None for an in-memory cache only.
    """

    #: Suffix of the index file beside an annotation file.
    SUFFIX = ".image-sizes.json"

    def __init__(self, index: str | os.PathLike[str] | None = None) -> None:
        self._cache: dict[str, tuple[int, int]] = {}
        self.index = Path(index) if index is not None else None
        self._known: dict[str, list[int]] = {}
        self._added = 0
        if self.index is not None and self.index.is_file():
            try:
                known = json.loads(self.index.read_text())["images"]
                self._known = {k: v for k, v in known.items()
                               if isinstance(v, list) and len(v) == 4}
            except (OSError, ValueError, KeyError, TypeError) as err:
                print(f"[pixelkit] {self.index}: image-size index unreadable ({err}); "
                      "rebuilding it", file=sys.stderr)

    @classmethod
    def beside(cls, annotations: str | os.PathLike[str]) -> ImageSizes:
        """Sizes indexed in ``<annotations>.image-sizes.json``."""
        return cls(f"{os.fspath(annotations)}{cls.SUFFIX}")

    def __call__(self, path: str, where: str) -> tuple[int, int]:
        """``(width, height)`` of the image at ``path``.

        Raises:
            MissingImageError: the file is missing or is not an image PIL can read.
        """
        size = self._cache.get(path)
        if size is None:
            size = self._indexed(path)
            if size is None:
                size = open_image_size(path, where)
                if self.index is not None:
                    self._remember(path, size)
            self._cache[path] = size
        return size

    def _indexed(self, path: str) -> tuple[int, int] | None:
        entry = self._known.get(os.path.abspath(path))
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # gone: open_image_size names it
        w, h, mtime, nbytes = entry
        return (int(w), int(h)) if (st.st_mtime_ns, st.st_size) == (mtime, nbytes) else None

    def _remember(self, path: str, size: tuple[int, int]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        self._known[os.path.abspath(path)] = [int(size[0]), int(size[1]), st.st_mtime_ns,
                                              st.st_size]
        self._added += 1

    def save(self) -> None:
        """Write the index (atomically) if sizes were read from images since it was loaded.
        A read-only data folder is not an error: the sizes are then read again next time."""
        if self.index is None or not self._added:
            return
        from pixelkit.files import atomic_write_text

        try:
            atomic_write_text(self.index, json.dumps({"version": 1, "images": self._known}))
            self._added = 0
        except OSError as err:
            print(f"[pixelkit] image-size index not written ({err}); image headers will be "
                  "read again on the next run", file=sys.stderr)


def open_image_size(path: str, where: str) -> tuple[int, int]:
    """Open an image header and return its ``(width, height)``; errors name the file.

    Raises:
        BombImageError: the header declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``
            (PIL only warns up to twice that; the warning is taken as an error too).
        MissingImageError: the file is missing or not an image PIL can read.
    """
    return _open_image(path, where, decode=False)


def decode_image(path: str, where: str) -> tuple[int, int]:
    """Open an image and decode every pixel (``im.load()``); returns ``(width, height)``.

    Reading the header (:func:`open_image_size`) does not find an image whose data is cut
    short; decoding does. PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` (which would pad a cut
    image with grey instead of failing) is switched off for the call and then restored
    (the flag is global to PIL, so do not decode in other threads meanwhile).

    Raises:
        TruncatedImageError: the pixel data is cut short or corrupt.
        BombImageError, MissingImageError: as :func:`open_image_size`.
    """
    from PIL import ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return _open_image(path, where, decode=True)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_rgb(path: str | os.PathLike[str], where: str | None = None) -> Any:
    """Open an image and decode it to RGB, with the readers' errors (never a raw PIL one).

    What training, evaluation and the Predictor read images with: a missing, unreadable,
    truncated or decompression-bomb image is a :class:`MissingImageError` /
    :class:`TruncatedImageError` / :class:`BombImageError` (all ``DataFormatError``, so
    ``ValueError``) whose message names the file, and its ``reason`` says which, for the
    skip-and-count rule. PIL's global ``LOAD_TRUNCATED_IMAGES`` is left as it is (off
    unless the user turned it on); unlike :func:`decode_image` this is safe in threads.

    Args:
        path: the image file.
        where: the record it belongs to, for the message (default: none).

    Returns:
        The ``PIL.Image.Image`` in RGB.
    """
    return _open_image(str(path), where, decode="rgb")


def _open_image(path: str, where: str | None, decode: bool | str) -> Any:
    """The size (``decode`` False: header only; True: all pixels decoded), or with
    ``decode="rgb"`` the decoded RGB image. Errors carry the file in ``path``."""
    at = f"{where}: " if where else ""
    try:
        return _open_image_or_raise(path, at, decode)
    except MissingImageError as err:
        err.path = path
        raise


def _open_image_or_raise(path: str, at: str, decode: bool | str) -> Any:
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        # PIL warns between MAX_IMAGE_PIXELS and twice that and raises above; a header
        # that large is as suspect at either level, so both refuse the image.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                size = int(im.size[0]), int(im.size[1])
                if decode:
                    try:
                        if decode == "rgb":
                            return im.convert("RGB")
                        im.load()
                    except (OSError, SyntaxError, ValueError, EOFError) as e:
                        raise TruncatedImageError(
                            f"{at}image file {path} is truncated or corrupt ({e})"
                        ) from None
                return size
        except DataFormatError:  # (a ValueError itself: not to be wrapped below)
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BombImageError(
                f"{at}image file {path} refused as a possible decompression bomb ({e})"
            ) from None
        except FileNotFoundError:
            raise MissingImageError(f"{at}image file {path} not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            # ValueError: a name PIL cannot even try (an embedded NUL, a lone surrogate).
            raise MissingImageError(f"{at}image file {path} cannot be read ({e})") from None


def check_image(path: str, size: tuple[int, int], sizes: ImageSizes, where: str) -> None:
    """Verify that an image opens and has the size the annotation file declares."""
    actual = sizes(path, where)
    if actual != tuple(size):
        raise MissingImageError(
            f"{where}: image file {path} is {actual[0]}x{actual[1]} but the annotation says "
            f"{size[0]}x{size[1]} (width x height)"
        )


def image_path(images_dir: str | os.PathLike[str] | None, file_name: str) -> str:
    """Join ``images_dir`` and a file name from the annotations (kept as is when None)."""
    return str(Path(images_dir) / file_name) if images_dir is not None else file_name


def format_pattern(pattern: str, image_id: int | str, **fields: Any) -> str:
    """Fill an image file pattern with an image id.

    ``{id}`` keeps a string id as written (``"000123"`` stays so); a pattern with an
    integer format spec such as ``{id:012d}`` gets the id as an int, which is how COCO
    file names (``000000137576.jpg``) are built from LN's string ids.

    Raises:
        ValueError: the pattern needs an integer but the id is not numeric.
    """
    try:
        return pattern.format(id=image_id, **fields)
    except ValueError:
        # isdecimal, not isdigit: "²" is a digit that int() refuses. int() itself refuses
        # more digits than sys.get_int_max_str_digits() (a ValueError, as documented).
        if isinstance(image_id, str) and image_id.strip().isdecimal():
            return pattern.format(id=int(image_id), **fields)
        raise


class ImageResolver:
    """Finds the image file of an image id by trying file-name patterns in order.

    The pattern that matched last is tried first, since one dataset uses one pattern.

    Args:
        images_dir: folder holding the images (None: no images available).
        patterns: file-name patterns relative to ``images_dir`` (``{id}`` = image id;
            any extra keyword given to :meth:`find` can be used too).
    """

    def __init__(self, images_dir: str | os.PathLike[str] | None, patterns: Sequence[str]) -> None:
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.patterns = list(patterns)
        self._last = 0
        self._cache: dict[tuple[Any, ...], str] = {}

    def candidates(self, image_id: int | str, **fields: Any) -> list[str]:
        """The file names the patterns give for this id (patterns that do not apply,
        e.g. ``{id:012d}`` for a non-numeric id, are left out)."""
        names = []
        for pattern in self.patterns:
            try:
                name = format_pattern(pattern, image_id, **fields)
            except (ValueError, KeyError, IndexError):
                continue
            if name not in names:
                names.append(name)
        return names

    def guess(self, image_id: int | str, **fields: Any) -> str:
        """The path of the first candidate, without looking at the disk."""
        name = (self.candidates(image_id, **fields) or [str(image_id)])[0]
        return str(self.images_dir / name) if self.images_dir is not None else name

    def find(self, image_id: int | str, where: str, **fields: Any) -> str:
        """Path of the first candidate file that exists.

        Raises:
            MissingImageError: none exists (or there is no images_dir); the message lists
                the files tried.
        """
        if self.images_dir is None:
            raise MissingImageError(
                f"{where}: the size of image {image_id!r} is unknown: it is not in image_sizes "
                "and no images_dir was given"
            )
        key = (image_id, *sorted(fields.items()))
        if key in self._cache:
            return self._cache[key]
        names = self.candidates(image_id, **fields)
        order = list(range(len(names)))
        if self._last < len(names):
            order.insert(0, order.pop(self._last))
        for i in order:
            path = self.images_dir / names[i]
            # os.path.isfile, not Path.is_file: a name too long for the file system (an id
            # of 400 digits) or holding a NUL is simply not there, not an OSError.
            if os.path.isfile(path):
                self._last = i
                self._cache[key] = str(path)
                return str(path)
        tried = ", ".join(names) or "(no pattern applies)"
        raise MissingImageError(
            f"{where}: image for image_id {image_id!r} not found in {self.images_dir} "
            f"(tried {tried})"
        )

    @classmethod
    def from_option(cls, images_dir: str | os.PathLike[str] | None,
                    image_pattern: str | Sequence[str] | None,
                    defaults: Sequence[str]) -> ImageResolver:
        """A resolver for a reader's ``image_pattern`` option (one pattern, several, or
        None for the format's ``defaults``)."""
        patterns = ([image_pattern] if isinstance(image_pattern, str)
                    else list(image_pattern or defaults))
        return cls(images_dir, patterns)


def locate_image(
    resolver: ImageResolver,
    sizes: ImageSizes,
    image_sizes: Mapping[Any, tuple[int, int]] | None,
    image_id: int | str,
    where: str,
    check_images: bool,
    **fields: Any,
) -> tuple[str, tuple[int, int]]:
    """Path and ``(width, height)`` of an image for formats that carry no sizes.

    A size given in ``image_sizes`` is used without touching the disk (unless
    ``check_images``, which also verifies it); otherwise the image header is read.

    Raises:
        MissingImageError: the image is needed but missing, unreadable or of another size.
    """
    known = lookup_size(image_sizes, image_id)
    if known is not None and not check_images:
        return resolver.guess(image_id, **fields), (int(known[0]), int(known[1]))
    path = resolver.find(image_id, where, **fields)
    if known is not None:
        check_image(path, known, sizes, where)
        return path, (int(known[0]), int(known[1]))
    return path, sizes(path, where)


def lookup_size(
    sizes: Mapping[Any, tuple[int, int]] | None, image_id: int | str
) -> tuple[int, int] | None:
    """A user-given size for ``image_id`` (string and integer spellings both tried)."""
    if sizes is None:
        return None
    for key in (image_id, str(image_id)):
        if key in sizes:
            return tuple(sizes[key])  # type: ignore[return-value]
    # At most 20 digits: any longer is no 64-bit id (and int() has a digit limit);
    # isdecimal, not isdigit, which also takes "²" (that int() refuses).
    numeric = isinstance(image_id, str) and image_id.isdecimal() and len(image_id) <= 20
    if numeric and int(image_id) in sizes:
        return tuple(sizes[int(image_id)])  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------- tasks


def to_loca_caption(samples: Iterable[Sample]) -> list[Sample]:
    """Explode ``densecap`` samples into one ``loca_caption`` sample per region.

    Each region keeps its box (pixels), its phrase as ``text``, its region / annotation
    id as ``ann_id`` (from ``extra["ann_ids"]`` when the reader stored them) and the
    ``source`` of its own annotation record (``extra["ann_sources"]``; else
    ``"<densecap source>/region<i>"``). Samples of other tasks pass through.

    Args:
        samples: samples from a dense-captioning reader.

    Returns:
        A new list; the input samples are not modified.
    """
    out: list[Sample] = []
    for s in samples:
        if s.task != "densecap":
            out.append(s)
            continue
        n = len(s.boxes)
        ann_ids = s.extra.get("ann_ids") or [None] * n
        sources = s.extra.get("ann_sources") or [f"{s.source}/region{i}" for i in range(n)]
        extra = {k: v for k, v in s.extra.items() if k not in ("ann_ids", "ann_sources")}
        for i, (box, text) in enumerate(zip(s.boxes, s.box_texts, strict=True)):
            out.append(
                Sample(
                    image_path=s.image_path,
                    image_size=s.image_size,
                    task="loca_caption",
                    text=text,
                    boxes=box[None].copy(),
                    box_texts=[text],
                    image_id=s.image_id,
                    ann_id=ann_ids[i],
                    source=sources[i],
                    extra=dict(extra),
                )
            )
    return out
