"""``pixelkit bench --only model --quick`` and ``--only gpu --smoke`` run and write their
figures (timings are never asserted: DESIGN.md section 7)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pixelkit.bench import BENCHES, largest_batch, paired_ratio, synthetic_train_batch
from pixelkit.cli import main
from pixelkit.config import PixelLLMConfig
from pixelkit.modeling.pixel_llm import PixelLLM
from pixelkit.modeling.summary import peak_bf16_flops

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


def test_location_bench_quick_writes_its_figures(tmp_path: Path) -> None:
    """Every format's ms per answer and the two ratios, and each written answer as long as
    its box markup plus EOS (the random model not stopping early nor babbling on)."""
    from pixelkit.modeling.location import LocationCodec
    from pixelkit.modeling.tokenizer import tokenizer_for

    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "location", "--quick", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    results = payload["results"]["location"]
    for key in ("refer_ms_regression", "refer_ms_text", "refer_ms_tokens", "refer_ms_regions",
                "refer_text_vs_regression", "refer_tokens_vs_regression",
                "refer_regions_vs_regression", "regions_proposals_ms"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    steps = payload["meta"]["benches"]["location"]["tokens_per_answer"]
    assert steps["regression"] == 1
    for fmt in ("text", "tokens", "regions"):
        config = PixelLLMConfig.from_name("tiny", {"location": {"format": fmt}})
        length = LocationCodec(config.location).box_length(tokenizer_for(config))
        assert steps[fmt] == length + 1, fmt


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


# --------------------------------------------------------------------------- gpu bench
GPU_FINITE = ("base_batch", "tokens", "base_params", "base_gflops_per_step",
              "base_eager_step_ms", "base_eager_images_per_s", "predict_captions_per_s",
              "predict_boxes_per_s", "predict_caption_ms", "paper_params",
              "paper_gflops_per_image", "paper_batch", "paper_step_ms", "paper_images_per_s",
              "total_s")
# NaN on a CPU smoke run: MFU (no peak rate for a CPU), CUDA peak memory, compilation (off).
GPU_NAN_ON_CPU = ("base_eager_mfu", "base_eager_peak_mem_gib", "base_compile_step_ms",
                  "base_compile_images_per_s", "base_compile_mfu", "base_compile_peak_mem_gib",
                  "base_compile_s", "paper_mfu", "paper_peak_mem_gib")


def test_gpu_bench_smoke_on_cpu_writes_every_key_and_imports_only_the_gpu_deps(
        tmp_path: Path) -> None:
    # A fresh interpreter in which the modules the GPU machine lacks (it has only torch,
    # lightning, transformers, peft and timm) cannot be imported, as there. Libraries may
    # still try them (timm tries wandb and carries on without it).
    out = tmp_path / "gpu.json"
    code = f"""
import importlib.abc, importlib.machinery, json, sys
from pixelkit.bench import GPU_BENCH_FORBIDDEN_MODULES as F

class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # A spec with no origin (torch's trace rules skip it), whose import fails as if absent.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in F:
            return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked)", name=spec.name)

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Block())
from pixelkit.cli import main
rc = main(["bench", "--only", "gpu", "--smoke", "--out", {str(out)!r}])
print(json.dumps({{"rc": rc, "bad": [m for m in F if m in sys.modules]}}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "bad": []}
    payload = json.loads(out.read_text())
    results, meta = payload["results"]["gpu"], payload["meta"]["benches"]["gpu"]
    for key in GPU_FINITE:
        assert math.isfinite(results[key]) and results[key] > 0, key
    for key in GPU_NAN_ON_CPU:
        assert key in results and math.isnan(results[key]), key
    assert results["paper_oom_seen"] == 0.0
    assert meta["device"] == "cpu" and meta["smoke"] is True
    assert "peak bf16" in meta["mfu"] and "smoke" in meta["compile"]
    assert "language_model" in meta["paper_checkpointing"]


def test_gpu_bench_without_cuda_is_skipped_not_failed(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the bench would run")
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "gpu", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["results"] == {} and "no CUDA" in payload["meta"]["benches"]["gpu"]["skipped"]


def test_estimate_flops_counts_a_step_linear_in_the_batch() -> None:
    torch.manual_seed(0)
    model = PixelLLM(PixelLLMConfig.from_name("tiny")).train()
    flops = {b: model.estimate_flops(synthetic_train_batch(model, b, 8)) for b in (2, 4)}
    assert flops[2] > 0
    assert flops[4] / flops[2] == pytest.approx(2.0, rel=0.05)
    assert all(p.grad is None for p in model.parameters())  # left no gradients behind
    # No peak rate for a CPU: the MFU is NaN, not a made-up number.
    assert math.isnan(model.estimate_mfu(flops[2], 0.1, "cpu"))


def test_peak_bf16_flops_table() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert peak_bf16_flops("NVIDIA H200")[0] == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    flops, why = peak_bf16_flops("Some Future GPU")
    assert math.isnan(flops) and "Some Future GPU" in why


def test_largest_batch_doubles_then_bisects() -> None:
    fits = 37
    tried: list[int] = []

    def try_batch(b: int) -> dict[str, float] | None:
        tried.append(b)
        return {"b": float(b)} if b <= fits else None

    size, fig, log = largest_batch(try_batch, 8, 256, time.perf_counter() + 60)
    assert fits - fits // 8 <= size <= fits and fig == {"b": float(size)}
    assert tried[:3] == [8, 16, 32] and log[3] == -64
    # The first size does not fit: halve.
    size, _, log = largest_batch(lambda b: {} if b <= 3 else None, 8, 256,
                                 time.perf_counter() + 60)
    assert (size, log) == (3, [-8, -4, 2, 3])
    # Nothing fits.
    assert largest_batch(lambda b: None, 1, 8, time.perf_counter() + 60)[:2] == (0, None)


def test_stage_steps_bench_quick_times_every_stage_and_writes_profiles(tmp_path: Path) -> None:
    """Each stage's step cost, as the quickstart builds the stage, and its torch.profiler
    table (the numbers are ``pixelkit bench``'s to report, not this test's)."""
    from pixelkit.stages import STAGES

    out, prof = tmp_path / "bench.json", tmp_path / "profiles"
    assert main(["bench", "--only", "stage_steps", "--quick", "--out", str(out),
                 "--profile", str(prof)]) == 0
    results = json.loads(out.read_text())["results"]["stage_steps"]
    for stage in STAGES:
        assert results[f"{stage}_step_ms"] > 0, stage
        assert math.isfinite(results[f"{stage}_vs_caption"])
        table = (prof / f"fit-{stage}.txt").read_text()
        assert "aten::" in table and "run_training_batch" in table, stage
    for key in ("adamw_fused_speedup", "image_cache_speedup"):  # the recipe's two choices
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["adamw_step_ms"] > 0 and results["load_cached_ms"] > 0
