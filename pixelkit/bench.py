"""``pixelkit bench``: throughput benchmarks, reported as numbers and ratios from one run.

Benchmarks live in a small registry, :data:`BENCHES` (name -> function of the parsed
arguments returning ``{metric: value}``); add one with :func:`register`. Timings are never
asserted in tests (DESIGN.md section 7): this command is where they are measured.

Usage::

    pixelkit bench                      # every bench, bench.json written
    pixelkit bench --only data --quick  # one bench, shorter timing loops
    pixelkit bench --only gpu --smoke   # the GPU bench's code path on the CPU, tiny shapes

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
    location: ms per referring answer (``Predictor.refer``) of the ``text`` and ``tokens``
        location formats against ``regression`` (:func:`location_bench`), the tiny preset
        on one core, each written answer its box's tokens plus EOS.
    checkpoint: checkpoint size without the frozen pretrained weights (meta device).
    real_step: ms per training step of the ``base`` preset at real sizes (384 px,
        ViT-B/16, Flan-T5-base width) at random initialisation, bf16-mixed autocast on the
        CPU, batch 2 (:func:`real_step_bench`): what ``tests/test_real_configs.py`` runs
        two of per real config, measured here rather than asserted there.
    stage_steps: ms per training step of each quickstart stage (:func:`stage_step_bench`),
        built from the packaged stage configs as the quickstart builds them, data loading
        included; ``--profile DIR`` writes each stage's ``torch.profiler`` op table (the
        profile in ``pixelkit/RECIPE.md``). A change that slows a stage's step shows here.
    gpu: one CUDA GPU (:func:`gpu_bench`): ``base`` preset training step time, images/s,
        MFU and peak memory, eager and compiled; the ``paper`` preset's largest batch with
        activation checkpointing; Predictor captions and box prompts per second.
        ``--smoke`` runs it on the CPU with tiny shapes; skipped without CUDA otherwise.

A bench may add facts about its run (device, why a figure is NaN) with :func:`record_meta`
(``meta.benches`` in the JSON), and raise :class:`SkipBench` when it cannot run here.

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

#: bench name -> what its figures need besides numbers (device, presets, why a figure is
#: NaN), filled through :func:`record_meta` during a run and written under ``meta.benches``.
_BENCH_META: dict[str, dict[str, Any]] = {}


class SkipBench(Exception):
    """Raised by a bench that cannot run here (e.g. no GPU): reported, not a failure."""


def record_meta(bench: str, **info: Any) -> None:
    """Add JSON-safe facts about ``bench``'s run to the JSON file's ``meta.benches``."""
    _BENCH_META.setdefault(bench, {}).update(info)


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
    parser.add_argument("--smoke", action="store_true",
                        help="gpu: the same code path on the CPU with tiny shapes and 2 steps")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="gpu: seconds for the whole bench (default 420); the paper "
                             "preset's batch-size search stops when it runs out")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="stage_steps: also write each stage's torch.profiler table to DIR")


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
    _BENCH_META.clear()
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = {k: float(v) for k, v in BENCHES[name](args).items()}
        except SkipBench as why:
            print(f"pixelkit bench: {name} skipped: {why}", file=sys.stderr)
            record_meta(name, skipped=str(why))
            continue
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
            "benches": dict(_BENCH_META),
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


def synthetic_train_batch(model: Any, batch_size: int, tokens: int,
                          device: Any = "cpu") -> dict[str, Any]:
    """A random trace-training batch for ``model`` (its image size and vocabulary).

    Args:
        model: a :class:`~pixelkit.modeling.pixel_llm.PixelLLM`.
        batch_size: B images, one narrative each.
        tokens: L target tokens per narrative (the last one EOS).
        device: where the tensors are made.

    Returns:
        :meth:`PixelLLM.forward` keyword arguments: ``images`` (B, 3, S, S) in [0, 1],
        ``labels`` (B, L), ``point_targets`` (B, L, 4), ``point_mask`` (B, L).
    """
    import torch

    B, L, S = batch_size, tokens, model.config.image_size
    labels = torch.randint(3, model.language_model.vocab_size, (B, L), device=device)
    labels[:, -1] = model.language_model.eos_id
    point_mask = torch.ones(B, L, dtype=torch.long, device=device)
    point_mask[:, 0] = 0  # position 0's input is the start token: no location
    return {"images": torch.rand(B, 3, S, S, device=device), "labels": labels,
            "point_targets": torch.rand(B, L, 4, device=device), "point_mask": point_mask}


def train_step(model: Any, opt: Any, batch: dict[str, Any], trace: bool = True,
               amp_device: str | None = None) -> None:
    """One training step: forward, backward, optimizer step.

    Args:
        model: a PixelLLM (or its ``torch.compile`` wrapper).
        opt: the optimizer of its trainable parameters.
        batch: from :func:`synthetic_train_batch`.
        trace: caption CE + point L1; False: caption-only (``return_points=False``, no
            point targets: the point head does not run).
        amp_device: ``"cuda"`` / ``"cpu"``: under ``torch.autocast`` in bf16, as Lightning's
            ``bf16-mixed`` precision runs a step; None: full precision.
    """
    import torch

    opt.zero_grad(set_to_none=True)
    amp = (torch.autocast(amp_device, dtype=torch.bfloat16) if amp_device
           else contextlib.nullcontext())
    with amp:
        if trace:
            loss = model(**batch).loss
        else:
            loss = model(batch["images"], labels=batch["labels"], return_points=False).loss
    loss.backward()
    opt.step()


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
    batch = synthetic_train_batch(model, train_batch, tokens)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t = interleaved_times({"caption": lambda: train_step(model, opt, batch, trace=False),
                           "trace": lambda: train_step(model, opt, batch)}, reps)
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


def location_bench(reps: int = 30, seed: int = 0,
                   expressions: tuple[str, ...] = ("the red circle", "a small blue square",
                                                   "the green triangle on the left")
                   ) -> dict[str, float]:
    """ms per referring answer (:meth:`Predictor.refer`) of each location format, the tiny
    preset at random initialisation, the same image and expressions for every format.

    ``regression`` reads the box from the point head at the EOS label of one
    teacher-forced pass (no token generated); ``text`` / ``tokens`` / ``regions`` generate
    the box markup and parse it (``regions``: one region token, with the 8 region tokens
    in the LM's prefix). ``regions`` also pays for its proposals once per image (the
    proposal head and NMS at :meth:`Predictor.set_image`): ``regions_proposals_ms``. A random model's answer would stop anywhere, so EOS is forbidden inside
    the markup (``min_new_tokens``): every written answer is its box's tokens
    (:meth:`LocationCodec.box_length`) plus EOS, as a trained model's (with the shapes
    tokenizer every box is that long). The image is encoded once, outside the timing: its
    cost is the same for every format. One round refers every expression once per format,
    in interleaved rounds (:func:`interleaved_times`).

    Returns:
        ``refer_ms_<format>`` (median CPU ms per answer),
        ``refer_<format>_vs_regression`` (:func:`paired_ratio`) for the written formats, and
        ``regions_proposals_ms`` (per image).
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.decoding import DecodeOptions
    from pixelkit.modeling.pixel_llm import PixelLLM
    from pixelkit.predictor import Predictor

    image = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    refer: dict[str, Callable[[], Any]] = {}
    steps: dict[str, int] = {}
    written = ("text", "tokens", "regions")
    propose: Callable[[], Any] = lambda: None  # set by the regions model
    for fmt in ("regression", *written):
        torch.manual_seed(seed)
        model = PixelLLM(PixelLLMConfig.from_name("tiny", {"location": {"format": fmt}})).eval()
        predictor = Predictor(model, device="cpu").set_image(image)
        n = 1  # regression: no token generated, the box read at the EOS state
        if predictor.codec.writes_targets:
            n = predictor.codec.box_length(predictor.tokenizer) + 1
            predictor.decode_options = DecodeOptions(max_new_tokens=n, min_new_tokens=n - 1)
        refer[fmt] = lambda p=predictor: [p.refer(e) for e in expressions]
        if fmt == "regions":
            features = predictor.image.features[None]
            k = predictor.codec.num_regions
            propose = lambda m=model, f=features, k=k: m.propose(f, max_detections=k)
        # LM steps the shortest answer took: its tokens, plus one for EOS unless it was cut
        # at n; the test checks that forbidding EOS made every answer n long.
        steps[fmt] = min(min(r.num_tokens + 1, n) for r in refer[fmt]())
    record_meta("location", tokens_per_answer=steps, expressions=list(expressions),
                regression="one teacher-forced pass over the expression and EOS; the box "
                           "is the point head's output at the EOS state")
    t = interleaved_times({**refer, "proposals": propose}, reps)
    out: dict[str, float] = {"reps": float(reps),
                             "regions_proposals_ms": _ms(t.pop("proposals"))}
    for fmt, times in t.items():
        out[f"refer_ms_{fmt}"] = _ms(times) / len(expressions)
    for fmt in written:
        out[f"refer_{fmt}_vs_regression"] = paired_ratio(t[fmt], t["regression"])
    return out


@register("location")
def bench_location(args: argparse.Namespace) -> dict[str, float]:
    """ms per referring answer of the ``text``, ``tokens`` and ``regions`` location formats
    as a ratio against ``regression`` (issue #15, :func:`location_bench`). Full: 30 interleaved
    rounds of 3 expressions; ``--quick``: 2 rounds."""
    with single_core():
        return location_bench(reps=2 if getattr(args, "quick", False) else 30)


# --------------------------------------------------------------------------------------------
# gpu bench
# --------------------------------------------------------------------------------------------

#: Modules the GPU bench must not import: the lent GPU machine has only torch, lightning,
#: transformers, peft and timm (and their dependencies). Checked by tests/test_bench.py.
GPU_BENCH_FORBIDDEN_MODULES = ("gradio", "wandb", "pycocoevalcap", "pandas", "matplotlib")


def activation_checkpointing(model: Any, enable: bool = True) -> list[str]:
    """Switch the libraries' own activation checkpointing on (or off) in ``model``.

    Trainable timm backbones through ``set_grad_checkpointing``, transformers ones and the
    LM through ``gradient_checkpointing_enable`` (non-reentrant: the frozen LM's inputs
    need not require grad). Frozen backbones run without autograd (``Backbone.forward``)
    and keep no activations, so they are left alone.

    Args:
        model: a :class:`~pixelkit.modeling.pixel_llm.PixelLLM`.
        enable: on, or back off.

    Returns:
        The parts switched (``image_encoder.backbones.1``, ``language_model``).
    """
    parts: list[Any] = [(f"image_encoder.backbones.{i}", getattr(b, "model", None)
                         or getattr(b, "encoder", None))
                        for i, b in enumerate(model.image_encoder.backbones) if not b.frozen]
    parts.append(("language_model", model.language_model._base()))
    switched = []
    for name, module in parts:
        if hasattr(module, "set_grad_checkpointing"):  # timm
            module.set_grad_checkpointing(enable)
        elif hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x
            if enable:
                module.activation_checkpointing_enable({"use_reentrant": False})
            else:
                module.activation_checkpointing_disable()
        elif hasattr(module, "gradient_checkpointing_enable"):  # older transformers
            if enable:
                module.gradient_checkpointing_enable({"use_reentrant": False})
            else:
                module.gradient_checkpointing_disable()
        else:
            continue
        switched.append(name)
    return switched


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(model: Any, batch: dict[str, Any], device: Any, warmup: int, steps: int,
                  compile: bool = False) -> dict[str, float]:
    """Wall time of training steps (:func:`train_step`, bf16 autocast, AdamW as the stages
    use it), the warm-up excluded, the device synchronised around the timed loop.

    Args:
        model: a PixelLLM in train mode on ``device``.
        batch: from :func:`synthetic_train_batch`, on ``device``.
        device: a ``torch.device``.
        warmup: untimed steps first (>= 1; the first one compiles with ``compile``).
        steps: timed steps.
        compile: run the step through ``torch.compile(model)``.

    Returns:
        ``step_ms``, ``images_per_s``, ``first_step_s`` (the first step alone: with
        ``compile``, mostly compilation) and ``peak_mem_gib``
        (``torch.cuda.max_memory_allocated`` over the warm-up and timed steps; NaN on a
        CPU).
    """
    import torch

    cuda = device.type == "cuda"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    fn = torch.compile(model) if compile else model
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(max(1, warmup)):
        train_step(fn, opt, batch, amp_device=device.type)
        if i == 0:
            _sync(device)
            first = time.perf_counter() - t0
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(fn, opt, batch, amp_device=device.type)
    _sync(device)
    step_s = (time.perf_counter() - t0) / steps
    return {"step_ms": 1e3 * step_s, "images_per_s": batch["images"].shape[0] / step_s,
            "first_step_s": first,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else math.nan}


def _counted_flops(model: Any, batch: dict[str, Any], device: Any) -> float:
    """:meth:`PixelLLM.estimate_flops` of ``batch`` under the timed steps' autocast."""
    import torch

    with torch.autocast(device.type, dtype=torch.bfloat16):
        return float(model.estimate_flops(batch))


def _build_on(config: Any, device: Any) -> Any:
    """A random-init PixelLLM built directly on ``device`` (no host copy of the weights)."""
    import warnings

    import torch

    from pixelkit.modeling.pixel_llm import PixelLLM

    with torch.device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return PixelLLM(config.without_pretrained()).train()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def largest_batch(try_batch: Callable[[int], dict[str, float] | None], start: int,
                  max_batch: int, deadline: float) -> tuple[int, dict[str, float] | None, list[int]]:
    """The largest batch size that fits: doubling from ``start`` until a try fails (or
    ``max_batch``), halving if ``start`` fails, then bisecting to within 1/8.

    Args:
        try_batch: runs a batch size; its figures, or None when it ran out of memory.
        start: the first size tried.
        max_batch: no larger size is tried.
        deadline: ``time.perf_counter()`` value after which no new size is tried.

    Returns:
        ``(size, figures of that size, sizes tried (negative: did not fit))``; ``(0, None,
        ...)`` when nothing fitted.
    """
    lo, hi, best, tried = 0, max_batch + 1, None, []
    b = min(start, max_batch)
    while time.perf_counter() < deadline:
        res = try_batch(b)
        tried.append(b if res is not None else -b)
        if res is not None:
            lo, best = b, res
        else:
            hi = b
        if hi - lo <= max(1, lo // 8):
            break
        b = min(2 * lo, max_batch) if hi == max_batch + 1 else (lo + hi) // 2
    return lo, best, tried


def _predictor_figures(model: Any, device: Any, prompts: int, tokens: int,
                       reps: int) -> dict[str, float]:
    """Predictor throughput (fp32, as it runs by default), every caption exactly
    ``tokens`` tokens long (EOS forbidden until then: a random model would stop anywhere).

    The token ids come from the model's real vocabulary; the text side (prompts, word
    grouping) uses the built-in shapes tokenizer, so no tokenizer is downloaded.
    """
    import torch

    from pixelkit.decoding import DecodeOptions
    from pixelkit.modeling.tokenizer import shapes_tokenizer
    from pixelkit.predictor import Predictor

    p = Predictor(model, tokenizer=shapes_tokenizer(), device=device,
                  decode_options=DecodeOptions(max_new_tokens=tokens, min_new_tokens=tokens))
    rng = np.random.default_rng(0)
    S = model.config.image_size
    images = [rng.integers(0, 255, (S, S, 3), dtype=np.uint8) for _ in range(prompts)]
    p.set_image(images[0])
    x0, y0 = rng.uniform(0, S * 0.6, (2, prompts))
    side = rng.uniform(S * 0.1, S * 0.4, prompts)
    boxes = [(float(a), float(b), float(min(a + s, S)), float(min(b + s, S)))
             for a, b, s in zip(x0, y0, side)]

    def wall(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    with torch.no_grad():
        captions = wall(lambda: p.caption_batch(p.encode_images(images)))
        batched = wall(lambda: p.caption_boxes(boxes))
        one = wall(lambda: p.set_image(images[0]).caption())
    model.train()
    return {"predict_captions_per_s": prompts / captions, "predict_boxes_per_s": prompts / batched,
            "predict_caption_ms": 1e3 * one, "predict_prompts": float(prompts),
            "predict_tokens": float(tokens)}


def gpu_bench(smoke: bool = False, budget_s: float = 420.0) -> dict[str, float]:
    """Training and inference throughput on one CUDA GPU; ``smoke``: the same path on the CPU.

    * ``base_{eager,compile}_*``: the ``base`` preset (random init), synthetic trace
      batches of 32 images at 384 px with 64-token narratives, bf16 autocast, AdamW: step
      time, images/s, MFU (FLOPs of one step counted by ``FlopCounterMode``, over the
      device's peak dense bf16 rate) and peak memory; eager and ``torch.compile`` in one
      run, ``base_compile_s`` the compiled first step (compilation) alone.
    * ``paper_*``: the ``paper`` preset with activation checkpointing
      (:func:`activation_checkpointing`) at the largest batch that fits
      (:func:`largest_batch`, from 8, within what is left of ``budget_s``); its MFU counts
      model FLOPs (no recomputation) from a small batch, scaled linearly.
    * ``predict_*``: the ``base`` model behind a :class:`~pixelkit.predictor.Predictor`:
      traced captions per second (32 images encoded and captioned in one batch), box
      prompts per second (32 boxes of one image, one ``caption_boxes`` call), one
      caption's latency; 64 tokens each.

    ``smoke`` runs every step on the CPU with the ``tiny`` preset for both presets, batch
    2, 8 tokens, 2 timed steps and no compilation (those keys NaN, the reason in
    ``meta.benches.gpu``).

    Args:
        smoke: the CPU smoke run.
        budget_s: seconds for the whole bench; the paper search stops when it is spent.

    Returns:
        ``{metric: value}``.
    """
    import torch

    from pixelkit.config import PixelLLMConfig
    from pixelkit.modeling.summary import peak_bf16_flops

    t_start = time.perf_counter()
    deadline = t_start + budget_s
    if smoke:
        device = torch.device("cpu")
        presets, batch, tokens, warmup, steps = ("tiny", "tiny"), 2, 8, 1, 2
        paper_start, paper_max, prompts, reps = 1, 2, 2, 1
    else:
        device = torch.device("cuda")
        presets, batch, tokens, warmup, steps = ("base", "paper"), 32, 64, 3, 10
        paper_start, paper_max, prompts, reps = 8, 256, 32, 3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_why = peak_bf16_flops(name)
    record_meta("gpu", device=name, smoke=smoke, torch=torch.__version__,
                cuda=torch.version.cuda, presets={"base": presets[0], "paper": presets[1]},
                batch=batch, tokens=tokens, warmup_steps=warmup, timed_steps=steps,
                precision="bf16-mixed (torch.autocast)", peak_bf16_flops=peak,
                peak_source=peak_why, predictor_precision="fp32 (the Predictor's default)",
                predictor_tokenizer="shapes (text side only; ids from the model's vocabulary)")
    torch.manual_seed(0)
    out: dict[str, float] = {"base_batch": float(batch), "tokens": float(tokens)}

    # --- base preset: eager and compiled, side by side.
    model = _build_on(PixelLLMConfig.from_name(presets[0]), device)
    out["base_params"] = float(model.num_params())
    out["base_trainable_params"] = float(model.num_params(trainable_only=True))
    data = synthetic_train_batch(model, batch, tokens, device)
    flops = _counted_flops(model, data, device)
    out["base_gflops_per_step"] = flops / 1e9
    modes = ("eager", "compile")
    for mode in modes:
        if mode == "compile" and smoke:
            record_meta("gpu", compile="skipped in smoke mode (base_compile_* are NaN)")
            fig: dict[str, float] = dict.fromkeys(
                ("step_ms", "images_per_s", "first_step_s", "peak_mem_gib"), math.nan)
        else:
            try:
                fig = time_training(model, data, device, warmup, steps, compile=mode == "compile")
            except Exception as err:  # noqa: BLE001 - a compile failure must not hide the rest
                if mode == "eager":
                    raise
                record_meta("gpu", compile=f"failed: {err!r}"[:500])
                fig = dict.fromkeys(("step_ms", "images_per_s", "first_step_s",
                                     "peak_mem_gib"), math.nan)
        out[f"base_{mode}_step_ms"] = fig["step_ms"]
        out[f"base_{mode}_images_per_s"] = fig["images_per_s"]
        out[f"base_{mode}_mfu"] = model.estimate_mfu(flops, fig["step_ms"] / 1e3, device)
        out[f"base_{mode}_peak_mem_gib"] = fig["peak_mem_gib"]
        if mode == "compile":
            out["base_compile_s"] = fig["first_step_s"] - fig["step_ms"] / 1e3
    if device.type != "cuda":
        record_meta("gpu", mfu=peak_why, peak_mem="CUDA only (max_memory_allocated)")

    # --- Predictor throughput on the base model.
    out.update(_predictor_figures(model, device, prompts, tokens, reps))
    del model, data
    _free_memory()

    # --- paper preset: activation checkpointing, the largest batch that fits.
    model = _build_on(PixelLLMConfig.from_name(presets[1]), device)
    out["paper_params"] = float(model.num_params())
    # Model FLOPs per image, counted before checkpointing (which would add recomputation).
    n = 2 if smoke else 1
    per_image = _counted_flops(model, synthetic_train_batch(model, n, tokens, device), device) / n
    out["paper_gflops_per_image"] = per_image / 1e9
    record_meta("gpu", paper_checkpointing=activation_checkpointing(model))

    def try_batch(b: int) -> dict[str, float] | None:
        try:
            return time_training(model, synthetic_train_batch(model, b, tokens, device), device,
                                 warmup=1, steps=2 if smoke else 3)
        except torch.cuda.OutOfMemoryError:
            pass
        # Out of the except block: the exception's frames (and their tensors) are gone.
        model.zero_grad(set_to_none=True)
        _free_memory()
        return None

    t0 = time.perf_counter()
    b, fig, tried = largest_batch(try_batch, paper_start, paper_max, deadline)
    out["paper_search_s"] = time.perf_counter() - t0
    record_meta("gpu", paper_batches_tried=tried, paper_max_batch=paper_max)
    out["paper_batch"] = float(b)
    fig = fig or dict.fromkeys(("step_ms", "images_per_s", "peak_mem_gib"), math.nan)
    out["paper_step_ms"] = fig["step_ms"]
    out["paper_images_per_s"] = fig["images_per_s"]
    out["paper_mfu"] = model.estimate_mfu(per_image * b, fig["step_ms"] / 1e3, device)
    out["paper_peak_mem_gib"] = fig["peak_mem_gib"]
    out["paper_oom_seen"] = float(any(t < 0 for t in tried))
    model = None  # its GPU memory freed for whatever runs next (try_batch still names it)
    _free_memory()
    out["total_s"] = time.perf_counter() - t_start
    return out


@register("gpu")
def bench_gpu(args: argparse.Namespace) -> dict[str, float]:
    """Training and Predictor throughput on one CUDA GPU (:func:`gpu_bench`); ``--smoke``
    for the CPU smoke run, ``--budget-s`` for the time it may take (default 420 s).
    Targets on an H100/H200: ``base_compile_mfu`` (or eager) >= 0.35, ``paper_batch`` >= 8."""
    import torch

    smoke = bool(getattr(args, "smoke", False))
    if not smoke and not torch.cuda.is_available():
        raise SkipBench("no CUDA device (`--smoke` runs the same code path on the CPU)")
    return gpu_bench(smoke=smoke, budget_s=float(getattr(args, "budget_s", 420.0) or 420.0))


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
    model = PixelLLM(PixelLLMConfig.from_name("base").without_pretrained()).train()
    data = synthetic_train_batch(model, batch, tokens)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step() -> float:
        t0 = time.perf_counter()
        # What Lightning's ``precision: bf16-mixed`` does on a CPU: autocast the forward.
        train_step(model, opt, data, amp_device="cpu")
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


def _built_stage(stage: str, root: Path, name: str | None = None, **settings: Any) -> Any:
    """The LightningCLI objects (``model``, ``datamodule``, ``trainer``) of packaged stage
    ``stage`` on the shapes world under ``root / "data"``, as the quickstart resolves it, from
    random weights, without W&B or prediction pictures; ``settings`` go to ``resolve_run``."""
    from pixelkit.runs import _quiet, resolve_run
    from pixelkit.training import cli_main

    overrides = {"model.init_from": None, **settings.pop("overrides", {})}
    resolved = resolve_run(stage, out=root, name=name, data_root=root / "data", wandb=False,
                           prediction_images=False, overrides=overrides, **settings)
    with _quiet():
        return cli_main(["--config", str(resolved.path)], run=False)


def stage_step_bench(steps: int = 20, warmup: int = 5, num_images: int = 200,
                     profile_dir: str | Path | None = None,
                     settings: dict[str, Any] | None = None) -> dict[str, float]:
    """Milliseconds per training step of each quickstart stage (tiny preset, the packaged
    stage configs, batch 32), on a shapes world of ``num_images`` images.

    Each stage is built from its packaged config exactly as ``pixelkit quickstart`` builds
    it (:func:`pixelkit.runs.resolve_run`), from random weights (``init_from`` is cleared:
    the step cost does not depend on the weights), with validation off, and trained for
    ``warmup + steps`` steps; the figure is the median time between consecutive step ends.

    Args:
        steps: timed steps per stage.
        warmup: untimed first steps (allocations, the data loader's start).
        num_images: size of the shapes world written for the bench.
        profile_dir: also profile each stage's steps with Lightning's ``PyTorchProfiler``
            (``torch.profiler``) and write ``<stage>.txt`` op tables there.
        settings: more :func:`pixelkit.runs.resolve_run` settings / ``overrides`` for every
            stage (e.g. ``{"overrides": {"trainer.precision": "bf16-mixed"}}``).

    Returns:
        ``<stage>_step_ms`` per stage and ``<stage>_vs_caption`` (its step over caption's).
    """
    import tempfile

    import lightning as L
    import torch

    from pixelkit.data.synth import synthesize
    from pixelkit.runs import _quiet
    from pixelkit.stages import STAGES

    class StepEnds(L.Callback):
        """The time of each training-batch end: a whole step as a run pays it."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.ends.append(time.perf_counter())

    settings = dict(settings or {})
    extra = dict(settings.pop("overrides", {}) or {})
    out: dict[str, float] = {"steps": float(steps), "threads": float(torch.get_num_threads())}
    with tempfile.TemporaryDirectory(prefix="pixelkit-stage-bench-") as tmp:
        root = Path(tmp)
        synthesize(root / "data", num_images=num_images, image_size=64, seed=0, progress=False)
        for stage in STAGES:
            overrides = {"trainer.limit_val_batches": 0, **extra}
            if profile_dir is not None:
                overrides["trainer.profiler"] = {
                    "class_path": "lightning.pytorch.profilers.PyTorchProfiler",
                    "init_args": {"dirpath": str(Path(profile_dir).resolve()), "filename": stage,
                                  "sort_by_key": "cpu_time_total", "row_limit": 40,
                                  "export_to_chrome": False}}
            cli = _built_stage(stage, root, steps=warmup + steps, overrides=overrides, **settings)
            timer = StepEnds()
            cli.trainer.callbacks.append(timer)
            with _quiet():
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            gaps = np.diff(timer.ends)[warmup - 1:]
            out[f"{stage}_step_ms"] = 1000 * float(np.median(gaps))
    for stage in STAGES:
        out[f"{stage}_vs_caption"] = out[f"{stage}_step_ms"] / out["caption_step_ms"]
    return out


def recipe_choice_bench(rounds: int = 40, num_images: int = 200) -> dict[str, float]:
    """Two choices of the quickstart recipe, each timed side by side with its alternative in
    interleaved rounds on the ``refer`` stage's batches (the packaged config, random init):

    * ``adamw_fused_speedup``: a whole training step (forward, backward, AdamW) with
      ``torch.optim.AdamW(fused=False)`` over the same with ``fused=True`` (what the stages
      use); ``adamw_step_ms`` / ``adamw_fused_step_ms``: the optimizer step alone.
    * ``image_cache_speedup``: loading a batch with the images decoded from disk at every
      read over the same with ``data.image_cache_mb`` (:class:`DecodedImages`), once the
      world is in the cache.

    Returns:
        The two ratios (> 1: the recipe's choice is faster) and the ``*_ms`` figures.
    """
    import copy
    import tempfile

    import torch

    from pixelkit.data.encoding import MODEL_KEYS
    from pixelkit.data.synth import synthesize

    out: dict[str, float] = {"rounds": float(rounds)}
    with tempfile.TemporaryDirectory(prefix="pixelkit-recipe-bench-") as tmp:
        root = Path(tmp)
        synthesize(root / "data", num_images=num_images, image_size=64, seed=0, progress=False)
        plain, cached = (_built_stage("refer", root, name=f"cache{mb}", steps=1,
                                      overrides={"data.image_cache_mb": mb}) for mb in (0, 64))
        for cli in (plain, cached):
            cli.datamodule.setup("fit")
        loaders = iter(plain.datamodule.train_dataloader()), iter(cached.datamodule.train_dataloader())
        for _ in range(num_images // 8):  # every image decoded once: the cache is warm
            next(loaders[1])
        t = interleaved_times({"decode": lambda: next(loaders[0]),
                               "cached": lambda: next(loaders[1])}, rounds)
        out["load_decode_ms"], out["load_cached_ms"] = _ms(t["decode"]), _ms(t["cached"])
        out["image_cache_speedup"] = paired_ratio(t["decode"], t["cached"])

        # PixelLLM.forward's arguments of one real batch (no proposal loss: a refer step)
        batch = next(loaders[1])
        batch = {"images": batch["images"], **{k: batch[k] for k in MODEL_KEYS}, "gt_boxes": None}
        models = {"plain": plain.model.model.train()}
        models["fused"] = copy.deepcopy(models["plain"])
        opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                                     fused=k == "fused") for k, m in models.items()}
        t = interleaved_times({k: (lambda k=k: train_step(models[k], opts[k], batch))
                               for k in models}, rounds)
        out["train_step_ms"], out["train_step_fused_ms"] = _ms(t["plain"]), _ms(t["fused"])
        out["adamw_fused_speedup"] = paired_ratio(t["plain"], t["fused"])
        t = interleaved_times({k: opts[k].step for k in models}, rounds)
        out["adamw_step_ms"], out["adamw_fused_step_ms"] = _ms(t["plain"]), _ms(t["fused"])
    return out


@register("stage_steps")
def bench_stage_steps(args: argparse.Namespace) -> dict[str, float]:
    """ms per training step of each quickstart stage as the quickstart runs it (tiny preset,
    batch 32, data loading included, validation excluded), and the recipe's fused AdamW and
    decoded-image cache against their alternatives (:func:`recipe_choice_bench`). Full: 20
    timed steps per stage, 40 rounds; ``--quick``: 4 and 3. ``--profile DIR`` also writes
    each stage's ``torch.profiler`` op table."""
    quick = bool(getattr(args, "quick", False))
    out = stage_step_bench(steps=4 if quick else 20, warmup=2 if quick else 5,
                           num_images=60 if quick else 200,
                           profile_dir=getattr(args, "profile", None))
    return out | recipe_choice_bench(rounds=3 if quick else 40, num_images=60 if quick else 200)
