"""Caption metrics through ``pycocoevalcap``: CIDEr(-D), METEOR, BLEU-4, ROUGE-L, exact match.

``caption_scores`` follows the COCO caption evaluation (``pycocoevalcap.eval.COCOEvalCap``):
every prediction and reference is first tokenized with the Stanford PTB tokenizer
(lower-cased, punctuation tokens removed), then scored with pycocoevalcap's own scorer
classes, so the numbers equal pycocoevalcap called directly. Notes on the scorers:

* ``CIDEr`` is pycocoevalcap's ``Cider``, which implements CIDEr-D (Gaussian length
  penalty sigma=6, clipped n-gram counts, x10). Its idf comes from the references of the
  evaluated set, so it is a corpus-level number: the same caption scores differently in
  a different set, and a set of one image always scores 0.
* ``BLEU-4`` is the corpus-level BLEU of ``Bleu(4)`` (``option='closest'``).
* ``METEOR`` is METEOR 1.5 (``-l en -norm``) run in a Java subprocess.

Two Java programs are involved (the PTB tokenizer and METEOR), so Java must be on PATH.

Robustness around pycocoevalcap's wrappers (known issues, e.g. tylin/coco-caption#6,
#14/#16, salaniz/pycocoevalcap#15):

* ``Meteor`` starts a JVM in ``__init__`` and relies on ``__del__`` to stop it; that
  ``__del__`` takes a lock which is left held when ``compute_score`` fails half-way (the
  JVM died, ``float('')``), so the garbage collector then deadlocks, and it raises
  ``AttributeError: ... no attribute 'lock'`` when ``java`` is missing. We subclass it
  (scoring code unchanged) with an idempotent ``close()`` that never waits on the lock,
  use one instance per call and close it in ``finally``; failures become a
  ``RuntimeError`` that carries the JVM's stderr. An optional timeout kills a hung JVM.
* The METEOR stdio protocol is line- and ``|||``-delimited: a newline inside a caption
  makes ``compute_score`` wait forever. Line breaks become spaces and ``|||`` is removed
  (pycocoevalcap removes it from the hypothesis only) before scoring.
* ``PTBTokenizer.tokenize`` writes its temporary file into the installed package folder
  (fails on a read-only install) and pairs output lines with inputs via ``zip``, which
  silently misaligns captions if a caption contains a character Java treats as a line
  break (``\\r``, ``\\u2028``...). :func:`ptb_tokenize` runs the same jar with the same
  options and punctuation list, writes its file to the system temp folder, maps every
  line-break character to a space and checks the output line count.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import threading
import unicodedata
from collections.abc import Hashable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from pixelkit.optional import require

# pycocoevalcap is the ``metrics`` extra: this module is imported only when a caption metric
# is asked for (``pixelkit.eval`` loads it lazily), and then says how to install it.
require("pycocoevalcap", "the caption metrics (CIDEr, METEOR, BLEU-4, ROUGE-L)")
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CAPTION_METRICS",
    "MeteorScorer",
    "caption_scores",
    "exact_match",
    "meteor_scores",
    "normalize_text",
    "ptb_tokenize",
]

#: The metric names :func:`caption_scores` can compute, in output order.
CAPTION_METRICS: tuple[str, ...] = ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L")

# Characters that Java (and str.splitlines) treat as line breaks; any of them inside a
# caption would shift the line-based PTB / METEOR protocols.
_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_BREAK_TABLE = str.maketrans({ch: " " for ch in _LINE_BREAKS})


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption metrics need Java on PATH (pycocoevalcap runs the Stanford PTB "
            "tokenizer and METEOR 1.5 as Java programs); install a JRE, e.g. openjdk-17"
        )


def _one_line(text: str) -> str:
    """Maps every line-break character to a space (see module docstring)."""
    return text.translate(_LINE_BREAK_TABLE)


# --------------------------------------------------------------------------- tokenizer


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenizes sentences exactly as ``pycocoevalcap``'s ``PTBTokenizer`` does.

    Same jar, same options (``-preserveLines -lowerCase``), same punctuation tokens
    removed afterwards; see the module docstring for what differs (temp-file location,
    line-break handling, output check).

    Args:
        sentences: raw captions.

    Returns:
        One lower-cased, space-joined token string per input, in order (``""`` for a
        caption that has no non-punctuation token).

    Raises:
        RuntimeError: if Java is missing, the tokenizer fails, or its output does not
            have one line per input.
    """
    if not sentences:
        return []
    _require_java()
    jar = os.path.join(
        os.path.dirname(os.path.abspath(_ptb.__file__)), _ptb.STANFORD_CORENLP_3_4_1_JAR
    )
    text = "\n".join(_one_line(s) for s in sentences)
    fd, path = tempfile.mkstemp(prefix="pixelkit_ptb_", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
        cmd = [
            "java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines", "-lowerCase", path,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        raise RuntimeError(
            f"PTB tokenizer failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = proc.stdout.decode().split("\n")
    # The tokenizer may add trailing empty lines; anything else means misalignment.
    if len(lines) < len(sentences) or any(line.strip() for line in lines[len(sentences) :]):
        raise RuntimeError(
            f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions; "
            "refusing to pair them up"
        )
    punct = set(_ptb.PUNCTUATIONS)
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in punct)
        for line in lines[: len(sentences)]
    ]


# ------------------------------------------------------------------------------ METEOR


class _ClosableMeteor(Meteor):
    """pycocoevalcap's ``Meteor`` with a deterministic, deadlock-free shutdown.

    Scoring (``compute_score`` / ``_stat``) is inherited unchanged; only the process
    life cycle differs: ``close()`` is idempotent and never waits on ``self.lock`` (which
    a failed ``compute_score`` leaves held), and ``__del__`` calls it quietly.
    """

    def close(self) -> None:
        proc = self.__dict__.pop("meteor_p", None)
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class MeteorScorer:
    """One METEOR 1.5 JVM (pycocoevalcap's ``Meteor``) with a clean life cycle.

    Starting the JVM and loading METEOR's paraphrase tables takes several seconds, so
    score all pairs in one :meth:`score` call (one batched ``EVAL`` line), or reuse one
    scorer for several calls. Use it as a context manager, or call :meth:`close`.

    Example:
        >>> with MeteorScorer() as m:  # doctest: +SKIP
        ...     corpus, per_pair = m.score(["a red circle"], [["a red disc", "red circle"]])

    Args:
        timeout_s: if set, the JVM is killed when one :meth:`score` call takes longer,
            and the call raises ``RuntimeError`` instead of hanging.
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        _require_java()
        self.timeout_s = timeout_s
        self._meteor: _ClosableMeteor | None = _ClosableMeteor()

    def score(
        self, candidates: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, list[float]]:
        """METEOR of each candidate against its references, in one batched call.

        Args:
            candidates: one hypothesis string per pair.
            references: one non-empty list of reference strings per pair.

        Returns:
            ``(corpus_score, per_pair_scores)`` as returned by ``Meteor.compute_score``
            (the corpus score is METEOR's own aggregate, not the mean of the pairs);
            ``(nan, [])`` for no pairs.

        Raises:
            ValueError: on a length mismatch or an empty reference list.
            RuntimeError: if the scorer is closed or the JVM fails or times out.
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        if not candidates:
            return float("nan"), []
        if self._meteor is None:
            raise RuntimeError("MeteorScorer is closed")
        res: dict[int, list[str]] = {}
        gts: dict[int, list[str]] = {}
        for i, (cand, refs) in enumerate(zip(candidates, references)):
            if isinstance(refs, str) or not refs:
                raise ValueError(f"pair {i}: references must be a non-empty list of strings")
            res[i] = [_one_line(cand)]
            gts[i] = [_one_line(r).replace("|||", "") for r in refs]
        meteor = self._meteor
        proc = meteor.meteor_p
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = None
        if self.timeout_s is not None:
            timer = threading.Timer(self.timeout_s, _kill)
            timer.daemon = True
            timer.start()
        try:
            corpus, per_pair = meteor.compute_score(gts, res)
        except (ValueError, OSError) as err:
            # The JVM died (bad install, out of memory, killed by the timeout): reading its
            # reply gave '' or the pipe broke. Stop it, then keep its stderr for the message.
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            stderr = b""
            with contextlib.suppress(Exception):
                stderr = proc.stderr.read()
            self.close()
            reason = f"timed out after {self.timeout_s} s" if timed_out.is_set() else "failed"
            raise RuntimeError(
                f"METEOR {reason} ({err!r}); JVM stderr: {stderr.decode(errors='replace')[-2000:]}"
            ) from err
        finally:
            if timer is not None:
                timer.cancel()
        return float(corpus), [float(s) for s in per_pair]

    def close(self) -> None:
        """Stops the JVM (idempotent)."""
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def meteor_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-pair METEOR 1.5 of raw strings, all pairs in one JVM and one batched call.

    No PTB tokenization is applied (METEOR's ``-norm`` lower-cases and normalises
    punctuation itself); this is what the DenseCap evaluators do.

    Args:
        candidates: one hypothesis per pair.
        references: one non-empty list of references per pair.

    Returns:
        One METEOR score in [0, 1] per pair (``[]`` without starting Java for no pairs).
    """
    if not candidates:
        if references:
            raise ValueError(f"0 candidates but {len(references)} reference lists")
        return []
    with MeteorScorer() as scorer:
        return scorer.score(candidates, references)[1]


# ------------------------------------------------------------------- caption metrics


def _check_pairs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | str]
) -> dict[Hashable, list[str]]:
    """Validates the id sets and types; returns references as lists."""
    if not predictions:
        raise ValueError("caption metrics: no predictions given")
    missing = [k for k in predictions if k not in references]
    extra = [k for k in references if k not in predictions]
    if missing or extra:
        raise ValueError(
            "predictions and references must cover the same ids: "
            f"{len(missing)} predicted ids have no references (e.g. {missing[:5]}), "
            f"{len(extra)} reference ids have no prediction (e.g. {extra[:5]})"
        )
    refs: dict[Hashable, list[str]] = {}
    for k, pred in predictions.items():
        if not isinstance(pred, str):
            raise TypeError(f"prediction for id {k!r} is {type(pred).__name__}, not str")
        r = references[k]
        r = [r] if isinstance(r, str) else list(r)
        if not r:
            raise ValueError(f"references for id {k!r} are empty")
        if not all(isinstance(x, str) for x in r):
            raise TypeError(f"references for id {k!r} must be strings")
        refs[k] = r
    return refs


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str] | str],
    metrics: Sequence[str] = CAPTION_METRICS,
    meteor: MeteorScorer | None = None,
) -> dict[str, float | int]:
    """COCO-style caption metrics (PTB tokenization, then pycocoevalcap's scorers).

    Args:
        predictions: ``{id: caption}``; ids may be ints, strings or any hashable
            (``1`` and ``"1"`` are different ids). An empty caption is allowed and
            scores 0.
        references: ``{id: [reference, ...]}`` (a bare string counts as one reference)
            with exactly the ids of ``predictions``.
        metrics: subset of :data:`CAPTION_METRICS` to compute; leave out ``"METEOR"``
            to avoid starting its JVM (several seconds) in quick validation loops.
        meteor: a :class:`MeteorScorer` to reuse; by default one is started for this
            call and closed before returning.

    Returns:
        ``{"CIDEr": ..., "METEOR": ..., "BLEU-4": ..., "ROUGE-L": ...}`` (floats, the
        requested subset) plus ``"num_captions"``.

    Raises:
        ValueError: on mismatched ids, empty reference lists, no predictions or an
            unknown metric name.
        TypeError: on a caption that is not a string.
        RuntimeError: if Java is missing or a Java program fails.
    """
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; choose from {CAPTION_METRICS}")
    refs = _check_pairs(predictions, references)
    ids = list(predictions)

    # One tokenizer run for predictions and references (the JVM start dominates); the
    # tokenizer is line-by-line, so this equals tokenizing them separately.
    flat = [predictions[k] for k in ids] + [r for k in ids for r in refs[k]]
    tokens = ptb_tokenize(flat)
    res: dict[Hashable, list[str]] = {k: [tokens[i]] for i, k in enumerate(ids)}
    gts: dict[Hashable, list[str]] = {}
    pos = len(ids)
    for k in ids:
        gts[k] = tokens[pos : pos + len(refs[k])]
        pos += len(refs[k])

    out: dict[str, float | int] = {}
    for name in CAPTION_METRICS:
        if name not in metrics:
            continue
        if name == "CIDEr":
            out[name] = float(Cider().compute_score(gts, res)[0])
        elif name == "BLEU-4":
            # Bleu prints its n-gram statistics to stdout; keep library output quiet.
            with contextlib.redirect_stdout(io.StringIO()):
                out[name] = float(Bleu(4).compute_score(gts, res)[0][3])
        elif name == "ROUGE-L":
            out[name] = float(Rouge().compute_score(gts, res)[0])
        elif name == "METEOR":
            cands = [res[k][0] for k in ids]
            ref_lists = [gts[k] for k in ids]
            if meteor is not None:
                out[name] = meteor.score(cands, ref_lists)[0]
            else:
                with MeteorScorer() as scorer:
                    out[name] = scorer.score(cands, ref_lists)[0]
    out["num_captions"] = len(ids)
    return out


# ------------------------------------------------------------------------ exact match


def normalize_text(text: str) -> str:
    """Normalisation used by :func:`exact_match`.

    Steps: Unicode NFKC; lower-case; every punctuation character (Unicode category
    ``P*``: ``.,;:!?'"-()[]``...) becomes a space, so "red-circle" equals "red circle"
    and "circle." equals "circle"; runs of whitespace collapse to one space; leading and
    trailing whitespace is stripped. Articles and other words are kept.

    Args:
        text: any string.

    Returns:
        The normalised string.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def exact_match(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | str]
) -> float:
    """Share of predictions equal to at least one of their references after normalisation.

    Args:
        predictions: ``{id: caption}``.
        references: ``{id: [reference, ...]}`` (or a bare string) with the same ids.

    Returns:
        Exact-match accuracy in [0, 1] (see :func:`normalize_text` for the comparison).

    Raises:
        ValueError: on mismatched ids or no predictions.
        TypeError: on a caption that is not a string.
    """
    refs = _check_pairs(predictions, references)
    hits = sum(
        normalize_text(pred) in {normalize_text(r) for r in refs[k]}
        for k, pred in predictions.items()
    )
    return hits / len(predictions)
