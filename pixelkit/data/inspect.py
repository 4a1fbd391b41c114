"""``pixelkit data inspect FILE``: read an annotation file and say what is in it.

Detects the format, reads every record through the same reader training uses (not
strict by default, so it counts every problem instead of stopping at the first), and
prints the format, the records read and skipped, the first errors (each naming file,
line or index, and field) and the fix-up counts (``clipped_boxes``, ``crowd_boxes``,
``narratives_without_trace``, ``duplicate_annotation_ids``, ...). ``--json`` prints the
same as one JSON object.

``--check-images`` (with ``--images``) makes the reader open every image header and check
its size, then decodes every image a sample uses in full, because a truncated file has a
good header: truncated or corrupt images (``truncated_images``) and decompression bombs
(``bomb_images``) are counted and listed by file name under ``image_errors``.

Exit status: 0 when the file could be read (even with skipped records), 1 when
``--strict`` stopped at a bad record, 2 when the file is missing, unreadable or of no
known format.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pixelkit.data.formats import FORMATS, detect_and_load, detect_format, read_any
from pixelkit.data.formats._common import decode_image, reason_of
from pixelkit.data.schema import DataFormatError, Sample

#: Formats whose files carry no image sizes (the image header gives them).
_SIZELESS = {"localized_narratives", "vg_regions"}


class _AnySize(Mapping[Any, tuple[int, int]]):
    """``image_sizes`` stand-in when no images are given: every image has one size.

    Lets inspect read size-less formats without images. For Localized Narratives a
    size of 1 x 1 keeps trace coordinates normalised (so clipping to [0, 1] is still
    counted); for Visual Genome a huge size means only negative coordinates get clipped.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self._size = size

    def __getitem__(self, key: Any) -> tuple[int, int]:
        return self._size

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``inspect``'s arguments to a (sub)parser."""
    parser.add_argument("file", metavar="FILE", help="annotation file to inspect")
    parser.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="image folder (needed to check sizes of LN / VG images)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad record (default: count them all)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="read as this format instead of detecting it",
    )
    parser.add_argument(
        "--instances",
        metavar="FILE",
        default=None,
        help="COCO instances.json for a refer pickle (default: beside it)",
    )
    parser.add_argument(
        "--check-images",
        action="store_true",
        help="open every image, check its size and decode it in full (needs --images)",
    )
    parser.add_argument(
        "--max-errors",
        type=int,
        default=5,
        metavar="N",
        help="errors to print in text mode (default 5; --json keeps 20)",
    )


def inspect_file(
    path: str | Path,
    images: str | Path | None = None,
    strict: bool = False,
    fmt: str | None = None,
    instances: str | Path | None = None,
    check_images: bool = False,
) -> dict[str, Any]:
    """Read a file and summarise it (the Python side of ``pixelkit data inspect``).

    Args:
        path: annotation file.
        images: image folder, or None.
        strict: raise on the first bad record instead of counting it.
        fmt: format name, or None to detect it.
        instances: ``instances.json`` for a refer pickle (default: beside it).
        check_images: open every image and check its size, then decode every image a
            sample uses (see :func:`check_image_data`).

    Returns:
        ``ReadReport.to_dict()`` plus ``samples`` (number of samples), ``tasks``
        (samples per task), ``images`` (distinct image files) and ``notes``; with
        ``check_images`` also ``images_decoded`` and ``image_errors`` (the problems of
        the decoding pass, also counted in ``counts``).

    Raises:
        FileNotFoundError, DataFormatError, ValueError, OSError: as the readers do.
    """
    data = None
    if fmt is None:
        fmt, data = detect_and_load(path)
    options: dict[str, Any] = {}
    notes: list[str] = []
    if check_images:
        options["check_images"] = True
    if fmt == "refer_pickle" and instances is not None:
        options["instances_path"] = instances
    if fmt in _SIZELESS and images is None:
        if fmt == "localized_narratives":
            options["image_sizes"] = _AnySize((1, 1))
            notes.append(
                "no --images: image sizes not read; trace coordinates stay "
                "normalised (clipping counted against [0, 1])"
            )
        else:
            options["image_sizes"] = _AnySize((2**31 - 1, 2**31 - 1))
            notes.append(
                "no --images: image sizes not read; boxes checked for zero area and "
                "negative coordinates only"
            )
    samples, report = read_any(path, images, strict=strict, format=fmt, data=data, **options)
    out = report.to_dict()
    out["samples"] = len(samples)
    out["tasks"] = dict(Counter(s.task for s in samples))
    out["images"] = len({s.image_path for s in samples})
    out["notes"] = notes
    if check_images:
        decoded, counts, errors = check_image_data(samples, strict)
        out["images_decoded"] = decoded
        out["image_errors"] = errors[: report.max_errors]
        for key, n in counts.items():
            out["counts"][key] = out["counts"].get(key, 0) + n
    return out


def check_image_data(
    samples: Sequence[Sample], strict: bool = False
) -> tuple[int, dict[str, int], list[str]]:
    """Decode every image the samples use, once each, in full.

    The readers' ``check_images`` reads headers only (cheap enough for training start-up),
    which a truncated file passes; this finds it (see
    :func:`pixelkit.data.formats._common.decode_image`).

    Args:
        samples: samples from a reader; each distinct ``image_path`` is decoded once, and a
            problem is reported at the first sample that uses the image.
        strict: raise the first problem instead of counting it.

    Returns:
        ``(decoded, counts, errors)``: images decoded without a problem, problems per
        reason (``truncated_images``, ``bomb_images``, ``missing_images``) and their
        messages (each names the annotation record and the image file).

    Raises:
        DataFormatError: (strict) the first image that does not decode.
    """
    first_use = {}
    for s in samples:
        first_use.setdefault(s.image_path, s.source)
    decoded, errors = 0, []
    counts: Counter[str] = Counter()
    for path, where in first_use.items():
        try:
            decode_image(path, where)
        except DataFormatError as e:
            if strict:
                raise
            counts[reason_of(e)] += 1
            errors.append(str(e))
            continue
        decoded += 1
    return decoded, dict(counts), errors


def _print_text(info: dict[str, Any], max_errors: int, out: TextIO) -> None:
    tasks = ", ".join(f"{n} {t}" for t, n in info["tasks"].items()) or "none"
    print(f"file:     {info['path']}", file=out)
    print(f"format:   {info['format']}", file=out)
    print(f"records:  {info['records']} read, {info['skipped']} skipped", file=out)
    print(f"samples:  {info['samples']} ({tasks}) on {info['images']} images", file=out)
    if info["counts"]:
        print("counts:", file=out)
        for key, n in sorted(info["counts"].items()):
            print(f"  {key}: {n}", file=out)
    else:
        print("counts:   none", file=out)
    errors = info["errors"]
    if errors:
        shown = errors[:max_errors]
        more = info["skipped"] - len(shown)
        print(f"errors (first {len(shown)} of {info['skipped']} skipped):", file=out)
        for msg in shown:
            print(f"  {msg}", file=out)
        if more > 0:
            print(f"  ... and {more} more", file=out)
    if "images_decoded" in info:
        bad = info["images"] - info["images_decoded"]
        print(f"images:   {info['images_decoded']} decoded in full, {bad} not", file=out)
        for msg in info["image_errors"][:max_errors]:
            print(f"  {msg}", file=out)
        if bad > max_errors:
            print(f"  ... and {bad - max_errors} more", file=out)
    for note in info["notes"]:
        print(f"note:     {note}", file=out)


def run(args: argparse.Namespace) -> int:
    """Run ``inspect`` with parsed arguments; returns the exit status."""
    path = Path(args.file)
    if args.check_images and args.images is None:
        return _fail(args, path, "--check-images needs --images DIR (the image folder)", 2)
    try:
        info = inspect_file(
            path,
            args.images,
            strict=args.strict,
            fmt=args.format,
            instances=args.instances,
            check_images=args.check_images,
        )
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        return _fail(args, path, f"cannot read {path}: {e.strerror or e}", 2)
    except DataFormatError as e:
        # With --strict a bad record stops the read; otherwise the whole file is unusable.
        status = 1 if args.strict and _readable_format(path, args.format) else 2
        return _fail(args, path, str(e), status)
    except (ValueError, OSError) as e:
        return _fail(args, path, f"cannot read {path}: {e}", 2)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info, args.max_errors, sys.stdout)
    return 0


def _readable_format(path: Path, fmt: str | None) -> bool:
    try:
        return bool(fmt or detect_format(path))
    except (OSError, DataFormatError):
        return False


def _fail(args: argparse.Namespace, path: Path, message: str, status: int) -> int:
    print(f"pixelkit data inspect: error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"path": str(path), "format": None, "error": message}))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pixelkit.data.inspect FILE ...`` (the CLI registers :func:`run`)."""
    parser = argparse.ArgumentParser(
        prog="pixelkit data inspect", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
