"""``pixelkit bench --only model --quick`` runs and writes its figures (timings are never
asserted: DESIGN.md section 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pixelkit.bench import BENCHES, paired_ratio
from pixelkit.cli import main

HEADLINES = ("decode_cache_speedup", "batched_prompts_speedup", "point_head_decode_overhead",
             "trace_train_step_overhead")


def test_model_bench_quick_writes_the_four_figures(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "model", "--quick", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # single_core() restored the settings
    results = json.loads(out.read_text())["results"]["model"]
    for key in HEADLINES:
        assert isinstance(results[key], float) and math.isfinite(results[key]), key
    for key in ("decode_cached_ms", "decode_uncached_ms", "prompts_batched_ms",
                "prompts_separate_ms", "train_caption_step_ms", "train_trace_step_ms"):
        assert results[key] > 0, key
    assert "model" in BENCHES and "data" in BENCHES


def test_paired_ratio_is_per_round() -> None:
    # Round 2 was disturbed for both sides: the per-round ratio ignores it.
    assert paired_ratio([2.0, 2.0, 20.0], [1.0, 1.0, 10.0]) == 2.0


def test_attention_bench_quick_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "attention", "--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]["attention"]
    for key in ("tiny_forward_ms", "tiny_attention_ms", "tiny_attention_mb"):
        assert results[key] > 0, key
    assert math.isfinite(results["tiny_attention_overhead"])


def test_data_scale_bench_small(tmp_path: Path) -> None:
    """The data_scale figures on a 400-narrative file with 2 workers (the bench's own path;
    the 500k figures are the README's)."""
    from pixelkit.bench import data_scale_bench

    out = data_scale_bench(400, workers=2, batches=2, folder=tmp_path)
    for key in ("narratives_per_s", "index_build_s", "first_batch_s", "peak_rss_mb",
                "peak_rss_sum_mb", "packed_mb", "file_gb"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    assert out["peak_rss_mb"] <= out["peak_rss_sum_mb"]  # PSS splits shared pages
    assert list(tmp_path.glob("*.samples-trace-*"))  # the cache the first batch came from
