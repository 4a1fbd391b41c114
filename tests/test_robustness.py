"""Nothing silent, nothing lost: one-line errors wherever a user can go wrong, bounded inputs,
atomic writes, logs that survive, an epoch that resumes where it stopped.

The ``pixelkit`` command answers every expected failure with one line naming the file and
the reason and exit status 2 (``--debug`` shows the traceback); these tests run it in
process and read what it printed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from pixelkit.cli import main
from pixelkit.data import catalog
from pixelkit.data.datamodule import MixtureSampler, ResumableDataLoader, TaskBatchSampler
from pixelkit.data.synth import synthesize
from pixelkit.decoding import DecodeOptions
from pixelkit.files import (
    atomic_write,
    atomic_write_text,
    check_writable_file,
    remove_partial_files,
)
from pixelkit.loggers import ResumableExperimentWriter


@pytest.fixture(scope="module")
def model() -> PixelLLM:
    torch.manual_seed(0)
    return PixelLLM(PixelLLMConfig.from_name("tiny")).eval()


@pytest.fixture(scope="module")
def ckpt(model: PixelLLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", stage="test")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust") / "data" / "shapes"
    synthesize(root, num_images=20, image_size=64, seed=0, val_fraction=0.3, progress=False)
    return root


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``pixelkit ARGV``: exit status 2 and one line on stderr, no traceback."""
    code, err = cli(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[pixelkit]")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def eval_args(world: Path, ckpt: Path, tmp_path: Path, *extra: str) -> list[str]:
    val = catalog.get("shapes/val")
    return ["eval", "--task", "refer", "--ckpt", str(ckpt), "--ann",
            str(val.annotation("refer", world)), "--images", str(val.image_dir(world)),
            "--out", str(tmp_path / "m.json"), "--no-progress", *extra]


# --------------------------------------------------------------------------- bad checkpoints


def test_bad_checkpoints_are_one_line(capsys, world: Path, ckpt: Path, tmp_path: Path) -> None:
    data = ckpt.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"", "notes": b"some text"}
    for name, content in cases.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        line = one_line_error(capsys, *eval_args(world, path, tmp_path))
        assert str(path) in line
    assert "truncated" in one_line_error(capsys, *eval_args(world, tmp_path / "truncated.ckpt",
                                                             tmp_path))
    assert "empty" in one_line_error(capsys, *eval_args(world, tmp_path / "empty.ckpt", tmp_path))
    # weights whose shapes do not fit the stored config
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.ndim == 2)
    state["state_dict"][key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.ckpt")
    assert "do not fit" in one_line_error(capsys, *eval_args(world, tmp_path / "shape.ckpt",
                                                              tmp_path))
    # a pickle that would run code is refused, and the message never suggests allowing it
    torch.save({"state_dict": {}, "pixelkit": {"x": _Evil()}}, tmp_path / "evil.ckpt")
    line = one_line_error(capsys, *eval_args(world, tmp_path / "evil.ckpt", tmp_path))
    assert "refused" in line and "weights_only=False" not in line
    assert not (tmp_path / "pwned").exists()
    assert "does not exist" in one_line_error(capsys, *eval_args(world, tmp_path / "no.ckpt",
                                                                  tmp_path))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_errors_in_python(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "x.ckpt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "x.ckpt")
    torch.save({"a": 1}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a pixelkit checkpoint"):
        load_model(tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


# --------------------------------------------------------------------------- eval arguments


def test_eval_checks_its_arguments_before_any_work(capsys, world: Path, ckpt: Path,
                                                   tmp_path: Path) -> None:
    assert "--limit must be at least 1" in one_line_error(
        capsys, *eval_args(world, ckpt, tmp_path, "--limit", "-3"))
    assert "--max-regions must be at least 1" in one_line_error(
        capsys, *eval_args(world, ckpt, tmp_path, "--max-regions", "-1"))
    assert "--score-threshold" in one_line_error(
        capsys, *eval_args(world, ckpt, tmp_path, "--score-threshold", "2"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = eval_args(world, ckpt, tmp_path)
    args[args.index("--out") + 1] = str(folder)
    assert "is a folder" in one_line_error(capsys, *args)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in one_line_error(
            capsys, *eval_args(world, ckpt, tmp_path, "--device", "cuda"))
    assert not (tmp_path / "m.json").exists()  # nothing ran


def test_bad_images_at_prediction_time(capsys, world: Path, ckpt: Path, tmp_path: Path,
                                       png_header) -> None:
    images = tmp_path / "val"
    images.mkdir()
    for png in catalog.get("shapes/val").image_dir(world).glob("*.png"):
        (images / png.name).write_bytes(png.read_bytes())
    pngs = sorted(images.glob("*.png"))
    data = pngs[0].read_bytes()
    pngs[0].write_bytes(data[: len(data) // 2])  # truncated after the reader's header check
    args = eval_args(world, ckpt, tmp_path)
    args[args.index("--images") + 1] = str(images)
    line = one_line_error(capsys, *args)
    assert pngs[0].name in line and "--skip-bad" in line
    code, err = cli(capsys, *args, "--skip-bad")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["skipped_images"] == 1 and pngs[0].name in err
    # A decompression bomb through the Predictor: a ValueError naming the file.
    bomb = png_header(tmp_path / "bomb.png", (40000, 40000))
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        Predictor.from_checkpoint(ckpt, device="cpu").set_image(bomb)


# --------------------------------------------------------------------------- fit and synth


def test_fit_paths_are_checked_in_one_line(capsys, world: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the packaged configs read data/shapes/... from here
    line = one_line_error(capsys, "fit", "--config", "caption")
    assert "data.train[0]" in line and "captions_train.json does not exist" in line
    monkeypatch.chdir(world.parents[1])  # now data/shapes exists, runs/caption does not
    line = one_line_error(capsys, "fit", "--config", "trace")
    assert "model.init_args.init_from" in line and "last.ckpt" in line
    assert "packaged" in one_line_error(capsys, "fit", "--config", "traec")


def test_synth_out_naming_a_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert "is a file" in one_line_error(capsys, "synth", "--out", str(tmp_path / "afile"),
                                         "--num-images", "2")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    argv = ["synth", "--out", str(tmp_path / "afile"), "--num-images", "2"]
    with pytest.raises(ValueError, match="is a file"):
        main(["--debug", *argv])
    proc = subprocess.run([sys.executable, "-m", "pixelkit", *argv], capture_output=True,
                          text=True, env={**os.environ, "PIXELKIT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# --------------------------------------------------------------------------- bounded inputs


def test_long_expressions_are_cut_and_say_so(model: PixelLLM, monkeypatch) -> None:
    p = Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=2))
    p.set_image(np.zeros((48, 64, 3), np.uint8))
    seen = []
    forward = p.forward_rows
    monkeypatch.setattr(p, "forward_rows", lambda images, rows: seen.append(rows)
                        or forward(images, rows))
    short = p.refer("the red circle")
    assert not short.truncated
    huge = p.refer("the big red circle on the left " * 4000)  # 124,000 characters
    assert huge.truncated and huge.to_dict()["truncated"] is True
    limit = model.config.language_model.max_prompt_tokens
    assert all(len(r.prompt_ids) <= limit and len(r.labels) <= p.max_text_length
               for r in seen[-1])
    assert p.caption_boxes([]) == []


@pytest.mark.extra("gradio")
def test_demo_refuses_a_huge_expression(model: PixelLLM) -> None:
    from pixelkit.demo import app

    handlers = app.DemoHandlers(Predictor(model, device="cpu"))
    with pytest.raises(app.DemoError, match="characters long"):
        handlers.refer(np.zeros((32, 32, 3), np.uint8), "x" * 110_000)


@pytest.mark.extra("gradio")
def test_demo_example_folders_of_dead_demos_are_removed(tmp_path: Path, monkeypatch) -> None:
    from pixelkit.demo import app

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"pixelkit-demo-{dead}-abc"
    live = tmp_path / f"pixelkit-demo-{os.getpid()}-def"
    stale.mkdir()
    live.mkdir()
    assert app.remove_stale_example_dirs() == [stale]
    assert not stale.exists() and live.exists()


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "metrics.json", '{"a": 1}')
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write('{"a": 2, "b"')  # half-written when the writer dies
        raise RuntimeError("killed")
    assert target.read_text() == '{"a": 1}'
    assert not list(tmp_path.glob(".*.partial"))
    (tmp_path / ".metrics.json.x1.partial").write_text("left by a SIGKILL")
    assert [p.name for p in remove_partial_files(tmp_path)] == [".metrics.json.x1.partial"]
    with pytest.raises(ValueError, match="is a folder"):
        check_writable_file(tmp_path)


def test_save_model_is_atomic(model: PixelLLM, tmp_path: Path, monkeypatch) -> None:
    path = save_model(model, tmp_path / "m.ckpt")
    before = path.read_bytes()

    def dies(obj, f):
        f.write(b"PK\x03\x04 half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="No space"):
        save_model(model, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.partial"))


# --------------------------------------------------------------------------- logs


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "train/loss"])
        w.writeheader()
        w.writerows(rows)


def test_csv_log_resumes_and_a_new_run_keeps_the_old_one(tmp_path: Path) -> None:
    log = tmp_path / "csv"
    log.mkdir()
    rows = [{"step": i, "train/loss": 1.0 / (i + 1)} for i in range(6)]
    _write_csv(log / "metrics.csv", rows)
    with open(log / "metrics.csv", "a") as f:
        f.write("6,0.1")  # a line cut short by the kill
    # Resumed from a checkpoint that had seen 4 rows: rows 4, 5 and the cut one go.
    writer = ResumableExperimentWriter(str(log), resume_rows=4)
    writer.log_metrics({"train/loss": 0.5, "val/loss": 0.7}, step=4)
    writer.save()
    got = list(csv.DictReader(open(log / "metrics.csv", newline="")))
    assert [int(r["step"]) for r in got] == [0, 1, 2, 3, 4] and writer.rows == 5
    assert got[-1]["val/loss"] == "0.7" and got[0]["val/loss"] == ""
    # A new run in the same folder moves the log aside instead of deleting it.
    ResumableExperimentWriter(str(log), resume_rows=None)
    aside = list(log.glob("metrics.*.csv"))
    assert len(aside) == 1 and not (log / "metrics.csv").exists()
    assert len(list(csv.DictReader(open(aside[0], newline="")))) == 5


# --------------------------------------------------------------------------- epoch position


@pytest.mark.parametrize("by_task", [False, True])
def test_a_resumed_loader_continues_its_epoch(by_task: bool) -> None:
    data = list(range(40))
    if by_task:
        sampler = TaskBatchSampler(np.array([0, 20, 40]), [1.0, 1.0], 4, 10, seed=3)
        make = lambda s, progress: ResumableDataLoader(data, batch_sampler=s,  # noqa: E731
                                                       progress=progress)
    else:
        sampler = MixtureSampler(np.ones(40), 40, seed=3)
        make = lambda s, progress: ResumableDataLoader(data, batch_size=4,  # noqa: E731
                                                       sampler=s, drop_last=True,
                                                       progress=progress)
    sampler.set_epoch(2)
    full = [b.tolist() for b in make(sampler, lambda: 0)]
    assert len(full) == 10
    # Saved after 6 batches of epoch 2 (the trainer's count, whatever was prefetched).
    state = make(sampler, lambda: 6).state_dict()
    assert state == {"epoch": 2, "batches": 6}
    fresh = (TaskBatchSampler(np.array([0, 20, 40]), [1.0, 1.0], 4, 10, seed=3) if by_task
             else MixtureSampler(np.ones(40), 40, seed=3))
    resumed = make(fresh, lambda: 0)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == full[6:]  # the rest of epoch 2, not a replay
    assert [b.tolist() for b in resumed] == full  # the skip applies once
    # A state saved at the end of an epoch starts the next one.
    resumed.load_state_dict({"epoch": 2, "batches": 10})
    assert fresh.epoch == 3 and len([b for b in resumed]) == 10


def test_a_source_given_twice_is_an_error(world: Path) -> None:
    from pixelkit.data.datamodule import PixelDataModule, shapes_sources

    src = shapes_sources(str(world), "train", ["caption"])
    with pytest.raises(ValueError, match=r"data.train\[1\] repeats data.train\[0\].*weight"):
        PixelDataModule(train=src + src)
