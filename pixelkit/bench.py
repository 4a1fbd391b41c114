"""``pixelkit bench``: throughput benchmarks, reported as numbers and ratios from one run.

Benchmarks live in a small registry, :data:`BENCHES` (name -> function of the parsed
arguments returning ``{metric: value}``); add one with :func:`register`. Timings are never
asserted in tests (DESIGN.md section 7): this command is where they are measured.

Usage::

    pixelkit bench                      # every bench, bench.json written
    pixelkit bench --only data --quick  # one bench, shorter timing loops

Benches:
    data: Localized Narratives trace-to-token alignment (:mod:`pixelkit.data.alignment`),
        narratives per second on one core for the full per-record path
        (``utterance_locations`` + ``align_caption``), with a word-level and a subword
        (byte-level BPE) fast tokenizer built in memory, on shapes-world narratives and on the
        real fixture record; also how often the official relative-position mapping gives a
        token another utterance than the exact text mapping.
    model: the tiny preset on one core (:func:`model_bench`): greedy decoding with vs
        without the key/value cache (``decode_cache_speedup``), with vs without the point
        head (``point_head_decode_overhead``), 32 box prompts in one batched call vs 32
        calls (``batched_prompts_speedup``), and a trace training step vs a caption-only one
        (``trace_train_step_overhead``); speed-ups as x, overheads as fractions.
    attention: what attention maps per word cost (:func:`attention_bench`): a teacher-forced
        pass with eager attention returning every weight against the usual sdpa pass, for
        the tiny preset and a Flan-T5-base shaped LM.
    checkpoint: checkpoint size without the frozen pretrained weights (meta device).
    real_step: ms per training step of the ``base`` preset at real sizes (384 px,
        ViT-B/16, Flan-T5-base width) at random initialisation, bf16-mixed autocast on the
        CPU, batch 2 (:func:`real_step_bench`): what ``tests/test_real_configs.py`` runs
        two of per real config, measured here rather than asserted there.

Run through the ``pixelkit`` command, the process keeps freed memory for reuse
(:mod:`pixelkit.runtime`, recorded as ``meta.keep_freed_memory`` in the JSON);
``PIXELKIT_KEEP_FREED_MEMORY=0 pixelkit bench`` measures glibc's default allocator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pixelkit.files import atomic_write_text
from pixelkit.runtime import keeps_freed_memory

BenchFn = Callable[[argparse.Namespace], dict[str, float]]

#: name -> benchmark. Each returns ``{metric: value}`` (floats).
BENCHES: dict[str, BenchFn] = {}


def register(name: str) -> Callable[[BenchFn], BenchFn]:
    """Decorator adding a benchmark to :data:`BENCHES` under ``name``."""

    def deco(fn: BenchFn) -> BenchFn:
        if name in BENCHES:
            raise ValueError(f"bench {name!r} is registered twice")
        BENCHES[name] = fn
        return fn

    return deco


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pixelkit bench`` options to ``parser``."""
    parser.add_argument(
        "--only",
        default="",
        metavar="NAME[,NAME]",
        help=f"run only these benches (comma-separated); known: {', '.join(sorted(BENCHES))}",
    )
    parser.add_argument("--out", default="bench.json", help="JSON file for the results")
    parser.add_argument(
        "--quick", action="store_true", help="shorter timing loops (noisier numbers)"
    )
    parser.add_argument("--narratives", type=int, default=None,
                        help="data_scale: narratives in the synthetic file (default 500000)")


def run(args: argparse.Namespace) -> int:
    """Run the selected benches, print a table and write the JSON file.

    Returns:
        The exit code: 0, or 2 for an unknown bench name, 1 when a bench failed.
    """
    names = [n.strip() for n in (args.only or "").split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(
            f"pixelkit bench: unknown bench {', '.join(unknown)}; known: {', '.join(BENCHES)}",
            file=sys.stderr,
        )
        return 2
    results: dict[str, dict[str, float]] = {}
    failed = False
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = {k: float(v) for k, v in BENCHES[name](args).items()}
        except Exception as err:  # noqa: BLE001 - report it and go on with the other benches
            print(f"pixelkit bench: {name} failed: {err!r}", file=sys.stderr)
            failed = True
            continue
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    _print_table(results)
    payload = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "quick": bool(getattr(args, "quick", False)),
            # glibc keeps freed buffers for reuse (pixelkit.runtime; the CLI's default).
            "keep_freed_memory": keeps_freed_memory(),
        },
        "results": results,
    }
    out = Path(getattr(args, "out", "bench.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2, allow_nan=True) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


def _print_table(results: dict[str, dict[str, float]]) -> None:
    rows = [(b, k, v) for b, metrics in results.items() for k, v in metrics.items()]
    if not rows:
        return
    wb = max(len("bench"), *(len(r[0]) for r in rows))
    wk = max(len("metric"), *(len(r[1]) for r in rows))
    print(f"{'bench':<{wb}}  {'metric':<{wk}}  value")
    print(f"{'-' * wb}  {'-' * wk}  {'-' * 12}")
    for b, k, v in rows:
        print(f"{b:<{wb}}  {k:<{wk}}  {_fmt(v)}")


def _fmt(v: float) -> str:
    if math.isnan(v) or v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:.3e}"


@contextlib.contextmanager
def single_core() -> Iterator[None]:
    """Pin this process to one CPU and one thread for torch / BLAS / tokenizers, then restore."""
    old_affinity = None
    if hasattr(os, "sched_getaffinity"):
        old_affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(old_affinity)})
    old_tok = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    old_torch = None
    try:
        import torch

        old_torch = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    limiter: Any = contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except ImportError:
        pass
    try:
        with limiter:
            yield
    finally:
        if old_torch is not None:
            import torch

            torch.set_num_threads(old_torch)
        if old_tok is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old_tok
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)


# --------------------------------------------------------------------------------------------
# data bench
# --------------------------------------------------------------------------------------------

_LN_VOCAB = (
    "in this image there is a large small red green blue circle square triangle "
    "on the left right top bottom and , ."
)


def _fixture_records() -> list[dict[str, Any]]:
    here = Path(__file__).resolve()
    for root in (here.parents[1].parent / "shared", here.parents[1] / "shared"):
        path = root / "fixtures" / "real" / "localized_narratives_sample.jsonl"
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def build_bench_tokenizers(texts: list[str]) -> dict[str, Any]:
    """A word-level and a byte-level BPE fast tokenizer trained in memory on ``texts``.

    Returns:
        ``{"word": PreTrainedTokenizerFast, "subword": PreTrainedTokenizerFast}``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    word = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word.normalizer = normalizers.Lowercase()
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    word.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # A tiny vocabulary (the 256 byte symbols + 4 specials + 24 merges) so that most words
    # of the small shapes vocabulary split into several pieces.
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=284,
            show_progress=False,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    kw = {"unk_token": "[UNK]", "pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    return {
        "word": PreTrainedTokenizerFast(tokenizer_object=word, **kw),
        "subword": PreTrainedTokenizerFast(tokenizer_object=bpe, **kw),
    }


def _throughput(
    fn: Callable[[dict[str, Any]], Any], records: list[dict[str, Any]], seconds: float
) -> tuple[float, float]:
    """Records per second of ``fn``, the best of repeated passes over ``records``.

    Returns:
        ``(per CPU second, per wall second)``. The CPU-time rate (this thread's CPU time) is
        the headline: on a shared machine other processes steal wall time from a pinned,
        single-threaded loop but not CPU time. The best pass, not the mean, for the same
        reason. On an idle machine the two agree.
    """
    for rec in records[: min(20, len(records))]:  # warm-up (caches, allocator)
        fn(rec)
    best_cpu = best_wall = 0.0
    t_end = time.perf_counter() + seconds
    passes = 0
    while passes < 3 or time.perf_counter() < t_end:
        c0, w0 = time.thread_time(), time.perf_counter()
        for rec in records:
            fn(rec)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        best_cpu = max(best_cpu, len(records) / max(cpu, 1e-9))
        best_wall = max(best_wall, len(records) / max(wall, 1e-9))
        passes += 1
    return best_cpu, best_wall


def ln_sized_narratives(num: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records of real Localized Narratives size: ~60 utterances, ~1,200 trace points.

    Real COCO narratives average a few dozen words and tens of seconds of trace at ~20 Hz;
    the shapes world's are about a third of that. Words come from the shapes vocabulary,
    traces are a random walk, so only the sizes are realistic.
    """
    rng = np.random.default_rng(seed)
    vocab = _LN_VOCAB.split()
    records = []
    for _ in range(num):
        n_words = int(rng.integers(40, 80))
        words = [vocab[i] for i in rng.integers(0, len(vocab), n_words)]
        durs = rng.uniform(0.3, 0.6, n_words)
        starts = np.concatenate([[0.0], np.cumsum(durs)[:-1]])
        timed = [
            {"utterance": w, "start_time": round(float(s), 3), "end_time": round(float(s + d), 3)}
            for w, s, d in zip(words, starts, durs)
        ]
        t = np.arange(0.0, float(starts[-1] + durs[-1]), 0.025)
        xy = 0.5 + np.cumsum(rng.normal(0, 0.01, (len(t), 2)), axis=0)
        cut = len(t) // 2  # two segments, as LN traces often have
        pts = [
            {"x": round(float(a), 4), "y": round(float(b), 4), "t": round(float(c), 3)}
            for (a, b), c in zip(xy, t)
        ]
        records.append(
            {"caption": " ".join(words), "timed_caption": timed, "traces": [pts[:cut], pts[cut:]]}
        )
    return records


@register("data")
def bench_data(args: argparse.Namespace) -> dict[str, float]:
    """Alignment throughput (narratives / s on one core) and official-vs-text mapping errors."""
    from pixelkit.data.alignment import align_caption, compare_methods, utterance_locations

    quick = bool(getattr(args, "quick", False))
    seconds = 0.4 if quick else 2.0
    num = 100 if quick else 400
    from pixelkit.data.synth import narrative_records

    records = narrative_records(num, seed=0)
    fixture = _fixture_records()
    toks = build_bench_tokenizers([r["caption"] for r in records + fixture])

    def full_path(tokenizer: Any, method: str) -> Callable[[dict[str, Any]], Any]:
        def fn(rec: dict[str, Any]) -> Any:
            locs = utterance_locations(rec)
            utts = [u["utterance"] for u in rec.get("timed_caption") or []]
            return align_caption(utts, locs, tokenizer, caption=rec.get("caption"), method=method)

        return fn

    out: dict[str, float] = {"records": float(len(records))}
    ln_sized = ln_sized_narratives(max(20, num // 4), seed=1)
    with single_core():
        out["utterance_locations_per_second"] = _throughput(utterance_locations, records, seconds)[
            0
        ]
        for tok_name, tok in toks.items():
            for method in ("official", "text"):
                cpu, wall = _throughput(full_path(tok, method), records, seconds)
                out[f"nps_shapes_{tok_name}_{method}"] = cpu
                if tok_name == "word" and method == "official":
                    out["nps_shapes_word_official_wall"] = wall
        out["nps_ln_sized_word_official"] = _throughput(
            full_path(toks["word"], "official"), ln_sized, seconds
        )[0]
        if fixture:
            out["nps_fixture_word_official"] = _throughput(
                full_path(toks["word"], "official"), fixture * 100, seconds
            )[0]
    base = out["nps_shapes_word_official"]
    out["alignment_narratives_per_second"] = base
    for key in [k for k in out if k.startswith("nps_") and not k.endswith("_wall")]:
        out["relative_" + key[4:]] = out[key] / base
    for tok_name, tok in toks.items():
        cmp = compare_methods(records, tok, reference="text", others=("official", "relative"))
        for key, val in cmp.items():
            out[f"{tok_name}_{key}"] = val
    return out


def write_bench_narratives(folder: Path, num: int, num_images: int = 1000, pool: int = 1000,
                           seed: int = 0) -> tuple[Path, Path]:
    """A Localized Narratives ``.jsonl`` file of ``num`` narratives in the real format, and
    ``num_images`` small JPEGs they point to (ids cycle over the images).

    The narratives are the shapes world's (:func:`pixelkit.data.synth.narrative_records`,
    ~8 KB a line; real COCO ones are a few times longer), ``pool`` distinct ones repeated
    with distinct annotator ids, so writing 500k costs the disk, not the CPU.

    Returns:
        ``(annotation file, images folder)``.
    """
    from PIL import Image

    from pixelkit.data.synth import narrative_records

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(images / f"{i}.jpg")
    bodies = []
    for rec in narrative_records(pool, seed=seed):
        body = {k: v for k, v in rec.items() if k not in ("dataset_id", "image_id", "annotator_id")}
        bodies.append(json.dumps(body)[1:])  # '"caption": ..., }' after the ids
    ann = folder / "bench_localized_narratives.jsonl"
    with open(ann, "w") as f:
        for i in range(num):
            f.write(f'{{"dataset_id": "bench", "image_id": "{i % num_images}", '
                    f'"annotator_id": {i}, {bodies[i % pool]}\n')
    return ann, images


def _pss_mb(pids: list[int]) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) in MB over ``pids`` (Linux ``smaps_rollup``). PSS splits a
    shared page between the processes sharing it, so its sum counts the packed samples and
    the libraries once; the RSS sum counts them once per process."""
    pss = rss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # the process ended
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
        pss += int(fields["Pss"].split()[0])
        rss += int(fields["Rss"].split()[0])
    return pss / 1024, rss / 1024


def data_scale_bench(num: int, workers: int = 8, batches: int = 50,
                     folder: Path | None = None) -> dict[str, float]:
    """Reading narratives at scale: throughput, memory with workers, time to first batch.

    * ``narratives_per_s``: read (streaming reader, sizes from the built index) + align
      (text alignment to the shapes tokenizer) on one core, CPU time, over the first 20k;
    * ``index_build_s``: the first run: read all ``num``, pack, save the packed cache and
      the image-size index;
    * ``first_batch_s``: a new data module on the built cache to its first batch from
      ``workers`` workers;
    * ``peak_rss_mb``: the data module and its workers together over ``batches`` batches:
      the peak of the summed PSS (shared pages counted once; ``peak_rss_sum_mb`` counts
      them per process).
    """
    import shutil
    import tempfile
    import threading

    from pixelkit.data.alignment import align_caption
    from pixelkit.data.datamodule import PixelDataModule, SourceConfig, read_source
    from pixelkit.data.formats import iter_any
    from pixelkit.modeling.tokenizer import load_tokenizer

    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="pixelkit-bench-")) if own else folder
    out: dict[str, float] = {"narratives": float(num), "workers": float(workers)}
    try:
        t0 = time.perf_counter()
        ann, images = write_bench_narratives(folder, num)
        out["file_gb"] = ann.stat().st_size / 1e9
        out["write_s"] = time.perf_counter() - t0
        src = SourceConfig(task="trace", ann=str(ann), images=str(images))
        t0 = time.perf_counter()
        built = read_source(src, cache=True)
        out["index_build_s"] = time.perf_counter() - t0
        out["packed_mb"] = built.nbytes / 1e6
        del built

        tok = load_tokenizer("shapes")
        with single_core():
            stream, _ = iter_any(ann, images, strict=False, index_sizes=True)
            c0, n = time.thread_time(), 0
            for s in stream:
                align_caption(s.utterances, s.utterance_boxes, tok,
                              points=s.utterance_points, caption=s.text, method="text")
                n += 1
                if n >= 20000:
                    break
            out["narratives_per_s"] = n / max(time.thread_time() - c0, 1e-9)
            stream.close()

        peak = [0.0, 0.0]
        done = threading.Event()

        def watch() -> None:
            me = os.getpid()
            while not done.is_set():
                kids = Path(f"/proc/{me}/task/{me}/children")
                pids = [me, *map(int, kids.read_text().split())] if kids.exists() else [me]
                pss, rss = _pss_mb(pids)
                peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
                done.wait(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        dm = PixelDataModule(train=[src], batch_size=32, num_workers=workers,
                             samples_per_epoch=32 * batches, val_limit=None)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        next(loader)
        out["first_batch_s"] = time.perf_counter() - t0
        for _ in loader:
            pass
        done.set()
        watcher.join()
        out["peak_rss_mb"], out["peak_rss_sum_mb"] = peak
        del loader, dm
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return out


@register("data_scale")
def bench_data_scale(args: argparse.Namespace) -> dict[str, float]:
    """Narratives at scale (issue targets on 500k: narratives_per_s >= 2,000,
    peak_rss_mb <= 3,072 with 8 workers, first_batch_s <= 60 with the index built).
    ``--narratives N`` (default 500,000; ``--quick``: 5,000)."""
    quick = bool(getattr(args, "quick", False))
    num = getattr(args, "narratives", None) or (5000 if quick else 500_000)
    return data_scale_bench(num, batches=10 if quick else 50)


# --------------------------------------------------------------------------------------------
# model bench
# --------------------------------------------------------------------------------------------


def interleaved_times(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """CPU seconds of each function per round, timed in interleaved rounds.

    Every round runs each function once (A B, then B A, alternating the order so neither
    always runs first), after one warm-up call each. Interleaving puts the variants of a
    round under the same machine load; :func:`paired_ratio` then compares them round by
    round, so a round that another process disturbed moves both sides.

    Args:
        fns: name -> a call to time.
        reps: rounds.

    Returns:
        name -> process CPU seconds of each round's call.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(reps):
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.process_time()
            fns[name]()
            times[name].append(time.process_time() - t0)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]`` (robust to rounds disturbed as a whole)."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def _ms(times: list[float]) -> float:
    return 1e3 * float(np.median(times))



def _train_batch(model: Any, batch: int, tokens: int) -> tuple[Any, ...]:
    """A random trace-training batch at the model's input size, and an AdamW on what it
    trains: ``(images, labels, point_targets, point_mask, optimizer)``."""
    import torch

    size = model.config.image_size
    images = torch.rand(batch, 3, size, size)
    labels = torch.randint(3, model.language_model.vocab_size, (batch, tokens))
    labels[:, -1] = model.language_model.eos_id
    targets = torch.rand(batch, tokens, 4)
    point_mask = torch.ones(batch, tokens, dtype=torch.long)
    point_mask[:, 0] = 0  # position 0's input is the start token: no location
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return images, labels, targets, point_mask, opt


def model_bench(reps: int = 21, tokens: int = 32, prompts: int = 32, train_batch: int = 8,
                seed: int = 0) -> dict[str, float]:
    """Decoding, batched prompts and training-step timings of the tiny preset on one core.

    Figures (median CPU ms per call, timed in rounds interleaved with their baseline) and
    their ratios (median of the per-round ratios, :func:`paired_ratio`). The one-prompt
    decode with / without the point head gets ``5 * reps`` rounds: a single round's ratio
    moves by several percent (interquartile range about 0.045 on this 2-core VM), as much
    as the point head costs, and the median of 105 rounds is within about 0.005.

    * ``decode_cache_speedup``: greedy decoding of exactly ``tokens`` tokens (EOS
      forbidden until then) of one prompt, without / with the key/value cache;
      ``decode_cache_speedup_batch`` the same for ``prompts`` prompts at once.
    * ``point_head_decode_overhead``: the same cached decode with / without the point head,
      minus 1 (the point head costs one MLP call and, for a row cut at the maximum length,
      one more LM step so that its last token gets a location);
      ``point_head_decode_overhead_batch`` for ``prompts`` prompts.
    * ``batched_prompts_speedup``: ``prompts`` separate ``Predictor.caption(box=...)``
      calls / one ``Predictor.caption_boxes`` call on the same boxes (one image encoding
      either way; ``tokens`` tokens per caption).
    * ``trace_train_step_overhead``: a training step (forward, backward, AdamW step) on
      ``train_batch`` images with trace targets / the same step caption-only
      (``return_points=False``, no point targets), minus 1.

    Returns:
        ``{metric: value}``: the four headline keys plus the ``*_ms`` timings.
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.data.encoding import make_row
    from pixelkit.decoding import DecodeOptions, greedy_decode
    from pixelkit.modeling.pixel_llm import PixelLLM
    from pixelkit.predictor import Predictor

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PixelLLM(PixelLLMConfig.from_name("tiny")).eval()
    predictor = Predictor(model, device="cpu",
                          decode_options=DecodeOptions(max_new_tokens=tokens, min_new_tokens=tokens))
    predictor.set_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out: dict[str, float] = {"reps": float(reps), "tokens": float(tokens),
                             "prompts": float(prompts)}

    # --- decoding: one prompt and a batch of prompts, whole-image trace prompts.
    for suffix, n in (("", 1), ("_batch", prompts)):
        rows = [make_row(predictor.tokenizer, "trace", "") for _ in range(n)]
        batch, feats, _ = predictor.collate_rows([predictor.image] * n, rows)
        with torch.no_grad():
            visual = model.visual_tokens(feats, batch["boxes"], image_index=batch["image_index"])
            prefix, mask = model.prefix(visual, batch["prompt_ids"], batch["prompt_mask"])

        def run(prefix=prefix, mask=mask, **kw: Any) -> Any:
            return greedy_decode(model, prefix, mask, tokens, min_new_tokens=tokens, **kw)

        # Two interleavings: cached next to no_points (the closest pair, a few % apart:
        # many rounds), and cached next to uncached (several times apart: fewer rounds).
        t = interleaved_times({"cached": run, "no_points": lambda run=run: run(with_points=False)},
                              5 * reps if n == 1 else reps)
        u = interleaved_times({"cached": run, "uncached": lambda run=run: run(use_cache=False)},
                              reps)
        out[f"decode_cached{suffix}_ms"] = _ms(t["cached"])
        out[f"decode_uncached{suffix}_ms"] = _ms(u["uncached"])
        out[f"decode_no_points{suffix}_ms"] = _ms(t["no_points"])
        out[f"decode_cache_speedup{suffix}"] = paired_ratio(u["uncached"], u["cached"])
        out[f"point_head_decode_overhead{suffix}"] = paired_ratio(t["cached"], t["no_points"]) - 1

    # --- many box prompts: one batched call against one call per box.
    W = H = 64
    x0, y0 = rng.uniform(0, 40, (2, prompts))
    side = rng.uniform(8, 24, prompts)
    boxes = [(float(a), float(b), float(min(a + s, W)), float(min(b + s, H)))
             for a, b, s in zip(x0, y0, side)]
    t = interleaved_times({
        "batched": lambda: predictor.caption_boxes(boxes),
        "separate": lambda: [predictor.caption(box=b) for b in boxes],
    }, max(2, reps // 3))  # a separate-calls round is `prompts` decodes: fewer rounds
    out["prompts_batched_ms"] = _ms(t["batched"])
    out["prompts_separate_ms"] = _ms(t["separate"])
    out["batched_prompts_speedup"] = paired_ratio(t["separate"], t["batched"])

    # --- training step: trace (caption CE + point L1) against caption-only.
    model.train()
    images, labels, targets, point_mask, opt = _train_batch(model, train_batch, tokens)

    def step(trace: bool) -> None:
        opt.zero_grad(set_to_none=True)
        if trace:
            loss = model(images, labels=labels, point_targets=targets, point_mask=point_mask).loss
        else:
            loss = model(images, labels=labels, return_points=False).loss
        loss.backward()
        opt.step()

    t = interleaved_times({"caption": lambda: step(False), "trace": lambda: step(True)}, reps)
    model.eval()
    out["train_caption_step_ms"] = _ms(t["caption"])
    out["train_trace_step_ms"] = _ms(t["trace"])
    out["trace_train_step_overhead"] = paired_ratio(t["trace"], t["caption"]) - 1
    return out


@register("checkpoint")
def bench_checkpoint(args: argparse.Namespace) -> dict[str, float]:
    """Checkpoint size without the frozen pretrained weights (the sources and fingerprints
    stand for them), counted on the meta device for the ``base`` and ``paper`` presets."""
    from pixelkit.checkpoint import checkpoint_sizes

    return {f"{preset}_checkpoint_{k}": v for preset in ("base", "paper")
            for k, v in checkpoint_sizes(preset).items()}


@register("model")
def bench_model(args: argparse.Namespace) -> dict[str, float]:
    """Decode cache, point-head and batched-prompt speed, trace training-step overhead.

    Full: 21 interleaved rounds, 32 tokens, 32 prompts. ``--quick``: 2 rounds, 8 tokens,
    4 prompts (a smoke run: the keys are written, the numbers mean little).
    """
    quick = bool(getattr(args, "quick", False))
    with single_core():
        if quick:
            return model_bench(reps=2, tokens=8, prompts=4, train_batch=2)
        return model_bench()


def attention_bench(reps: int = 30, tokens: int = 25, models: tuple[str, ...] = ("tiny", "t5-base"),
                    seed: int = 0) -> dict[str, float]:
    """What attention maps cost (:mod:`pixelkit.analysis`): a teacher-forced pass as usual
    (sdpa attention, no weights returned) against :func:`pixelkit.analysis.attention_pass`
    (eager attention, every weight returned, the extractor's query -> image weights too),
    on one core, in interleaved rounds.

    Models: ``tiny`` (the preset) and ``t5-base`` (the tiny image side with a Flan-T5-base
    shaped LM, random weights, 32 queries: where the LM's attention dominates). One
    whole-image trace prompt with a ``tokens``-token target.

    Returns:
        Per model ``<model>_forward_ms``, ``<model>_attention_ms``,
        ``<model>_attention_overhead`` (ratio - 1) and ``<model>_attention_mb`` (the
        returned weights, float32).
    """
    import torch

    from pixelkit.analysis import attention_pass
    from pixelkit.config import PixelLLMConfig
    from pixelkit.data.encoding import make_row
    from pixelkit.modeling.pixel_llm import PixelLLM
    from pixelkit.predictor import Predictor

    overrides = {"tiny": {}, "t5-base": {"language_model.name": "google/flan-t5-base",
                                         "language_model.arch": {}, "extractor.num_queries": 32}}
    out: dict[str, float] = {"reps": float(reps), "tokens": float(tokens)}
    rng = np.random.default_rng(seed)
    for name in models:
        torch.manual_seed(seed)
        model = PixelLLM(PixelLLMConfig.from_name("tiny", **overrides[name])).eval()
        predictor = Predictor(model, device="cpu")
        predictor.set_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        row = make_row(predictor.tokenizer, "trace", "",
                       target_ids=[int(v) for v in rng.integers(3, 30, tokens)])
        batch, feats, _ = predictor.collate_rows([predictor.image], [row])
        keys = {k: batch[k] for k in ("image_index", "boxes", "prompt_ids", "prompt_mask",
                                      "labels")}

        def forward(model=model, feats=feats, keys=keys) -> None:
            with torch.no_grad():
                model(features=feats, **keys)

        t = interleaved_times({"forward": forward,
                               "attention": lambda m=model, f=feats, b=batch: attention_pass(m, f, b)},
                              reps)
        run = attention_pass(model, feats, batch)
        weights = [*run.self_attentions, *(run.encoder_attentions or []),
                   *(run.cross_attentions or [])]
        out[f"{name}_forward_ms"] = _ms(t["forward"])
        out[f"{name}_attention_ms"] = _ms(t["attention"])
        out[f"{name}_attention_overhead"] = paired_ratio(t["attention"], t["forward"]) - 1
        out[f"{name}_attention_mb"] = sum(w.numel() for w in weights) * 4 / 1e6
        out[f"{name}_prefix_positions"] = float(run.prefix_mask.shape[1])
    return out


@register("attention")
def bench_attention(args: argparse.Namespace) -> dict[str, float]:
    """The cost of attention maps per word (eager attention, weights returned).

    Full: 30 rounds, the tiny preset and a Flan-T5-base shaped LM. ``--quick``: 2 rounds,
    the tiny preset only.
    """
    with single_core():
        if getattr(args, "quick", False):
            return attention_bench(reps=2, models=("tiny",))
        return attention_bench()


def real_step_bench(reps: int = 3, batch: int = 2, tokens: int = 24,
                    seed: int = 0) -> dict[str, float]:
    """One training step of the ``base`` preset (384 px, ViT-B/16, Flan-T5-base width) at
    random initialisation, under bf16-mixed autocast on the CPU, as ``real/*.yaml`` trains.

    The step is a trace step (text cross-entropy and point L1, backward, AdamW on what the
    preset trains: the ViT, the extractor, LoRA); ``tokens`` target tokens per row. The
    model is built with no download (the LM's architecture from the built-in table, its
    vocabulary Flan-T5's 32128 ids). One warm-up step, then the median of ``reps``; the
    process's own thread count (``threads``): this is an absolute figure, not a ratio.

    Returns:
        ``{"real_step_ms", "real_step_min_ms", "threads", "batch", "tokens", "reps"}``.
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.modeling.pixel_llm import PixelLLM

    torch.manual_seed(seed)
    config = PixelLLMConfig.from_name("base").without_pretrained()
    model = PixelLLM(config).train()
    images, labels, targets, point_mask, opt = _train_batch(model, batch, tokens)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # What Lightning's ``precision: bf16-mixed`` does on a CPU: autocast the forward.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(images, labels=labels, point_targets=targets,
                         point_mask=point_mask).loss
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up: first-call allocations and kernel selection
    times = [step() for _ in range(reps)]
    return {"real_step_ms": _ms(times), "real_step_min_ms": 1000 * min(times),
            "threads": float(torch.get_num_threads()), "batch": float(batch),
            "tokens": float(tokens), "reps": float(reps)}


@register("real_step")
def bench_real_step(args: argparse.Namespace) -> dict[str, float]:
    """ms per training step of the ``base`` preset at real sizes (bf16-mixed, CPU, batch 2).

    Full: 2 timed steps (about 2 minutes on a busy 2-core VM, model build included).
    ``--quick``: 1 timed step.
    """
    return real_step_bench(reps=1 if getattr(args, "quick", False) else 2)
