"""Training that loses nothing: SIGKILL a ``pixelkit fit`` run at random moments (once in the
middle of writing a checkpoint), resume it with ``--ckpt_path last``, and check that

* it ends at the right step, with the optimiser and the LR schedule continued;
* ``metrics.csv`` holds every logged step exactly once;
* no partial checkpoint is ever taken as ``last`` (a kill leaves every ``*.ckpt`` whole);
* the epoch continues where the checkpoint left it (the loader's saved position).

Also: a world with missing, truncated and decompression-bomb images trains to the end with
the bad images counted, and stops with the files named past ``max_bad_image_share``.
"""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path
from typing import Any

import _fitrunner
import pytest
import torch

from pixelkit.checkpoint import checkpoint_problem
from pixelkit.data.synth import synthesize

MAX_STEPS, VAL_EVERY = 12, 3

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "shapes"
    synthesize(root, num_images=40, image_size=64, seed=0, val_fraction=0.2, progress=False)
    return root


def write_config(world: Path, run: Path, *, max_steps: int = MAX_STEPS, wandb: bool = False,
                 **data: object) -> Path:
    """The packaged caption config on ``world``, small and fast, logging into ``run``
    (resolved through :func:`pixelkit.runs.resolve_run`, as every run is)."""
    from pixelkit.runs import resolve_run

    resolved = resolve_run(
        "caption", out=run.parent.parent, name=run.name, data_root=world, steps=max_steps,
        val_every=VAL_EVERY, batch_size=4, val_limit=4, wandb=wandb, prediction_images=False,
        overrides={"data.samples_per_epoch": 16, "trainer.log_every_n_steps": 1,
                   **{f"data.{k}": v for k, v in data.items()}})
    assert resolved.dir == run.resolve()
    return resolved.path


def fit(config: Path, *extra: str, slow_save: tuple[str, int] | None = None) -> Any:
    """``pixelkit fit --config config EXTRA`` in its own (forked) process, logging to
    its log (:func:`_log`)."""
    return _fitrunner.start(["fit", "--config", str(config), *extra], _log(config), slow_save)


def _log(config: Path) -> Path:
    """A run's log: beside its resolved config (``<out>/configs/<name>.log``)."""
    return config.with_suffix(".log")


def run_log(run: Path) -> str:
    """The log of the run whose folder is ``run`` (``<out>/runs/<name>``)."""
    return _log(run.parent.parent / "configs" / f"{run.name}.yaml").read_text()


def wait(proc: Any, timeout: float = 600) -> int | None:
    """The exit status of a run (None if it is still running after ``timeout``)."""
    proc.join(timeout)
    return proc.exitcode


def finish(config: Path, attempts: int = 3) -> None:
    """Resume with ``--ckpt_path last`` until the run completes."""
    for _ in range(attempts):
        if wait(fit(config, "--ckpt_path", "last")) == 0:
            return
    pytest.fail(_log(config).read_text()[-4000:])


def assert_whole(run: Path) -> None:
    """Every checkpoint in the run reads (a kill never leaves a partial *.ckpt)."""
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        assert checkpoint_problem(ckpt) is None, checkpoint_problem(ckpt)


def assert_complete(run: Path) -> None:
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == MAX_STEPS
    # The optimiser and the LR schedule went on from the checkpoint, not from scratch.
    adam_steps = {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {MAX_STEPS}
    assert last["lr_schedulers"][0]["last_epoch"] == MAX_STEPS
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the loader's place
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [int(r["step"]) for r in rows if r.get("train/loss")]
    val = [int(r["step"]) for r in rows if r.get("val/loss")]
    assert train == list(range(MAX_STEPS)), train  # every step, once, in order
    assert val == list(range(VAL_EVERY - 1, MAX_STEPS, VAL_EVERY)), val
    assert last["pixelkit_run"]["csv_rows"] == len(rows)


def _saves_seen(last: Path, seen: list[float]) -> int:
    """How many times ``last.ckpt`` has been (re)written so far (``seen`` keeps mtimes)."""
    try:
        mtime = last.stat().st_mtime_ns
    except FileNotFoundError:
        return len(seen)
    if not seen or seen[-1] != mtime:
        seen.append(mtime)
    return len(seen)


def kill_trial(world: Path, run: Path, trial: int, max_saves: int = 2,
               max_delay: float = 0.2) -> tuple[bool, str]:
    """Kill a run at a random moment, resume it to the end and check everything.

    The moment is seeded (the same in every CI run) and tied to the run's progress, not
    to wall time, so it means the same on a fast and on a loaded machine: after ``k`` of
    the run's ``last.ckpt`` writes (``k`` = 0: before the first), plus a random delay.

    Returns:
        ``(killed, the run's log)``: whether the kill found the run still going.
    """
    rng = random.Random(trial)
    saves, delay = rng.randint(0, max_saves), rng.uniform(0.0, max_delay)
    config = write_config(world, run)
    proc = fit(config)
    seen: list[float] = []
    deadline = time.monotonic() + 600
    while proc.is_alive() and _saves_seen(run / "checkpoints" / "last.ckpt", seen) < saves:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    time.sleep(delay)
    killed = proc.is_alive()
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.join()
    assert_whole(run)  # every checkpoint the kill left reads
    finish(config)
    assert_whole(run)
    assert_complete(run)
    return killed, run_log(run)


@pytest.mark.parametrize("trial", range(4))
def test_killed_at_a_random_moment_resumes_whole(world: Path, tmp_path: Path, trial: int) -> None:
    killed, _ = kill_trial(world, tmp_path / "runs" / "run", trial)
    # After at most 2 of 4 checkpoints and 0.2 s, at least 3 steps and a validation remain.
    assert killed, "the run ended before the kill"


@pytest.mark.stress
@pytest.mark.parametrize("trial", range(4, 44))
def test_killed_at_more_random_moments(world: Path, tmp_path: Path, trial: int) -> None:
    kill_trial(world, tmp_path / "runs" / "run", trial, max_saves=4, max_delay=1.0)


def test_killed_before_any_checkpoint_starts_fresh_in_one_line(world: Path,
                                                               tmp_path: Path) -> None:
    killed, log = kill_trial(world, tmp_path / "runs" / "run", trial=0, max_saves=0, max_delay=0.0)
    assert killed
    assert "--ckpt_path last: no checkpoint in" in log and "starting from step 0" in log


def test_killed_while_writing_a_checkpoint(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "run"
    config = write_config(world, run)
    marker = tmp_path / "writing"
    # The 4th write is last.ckpt at the 2nd validation (each one writes the best, then last).
    proc = fit(config, slow_save=(str(marker), 4))
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.is_alive(), run_log(run)[-4000:]
        assert time.monotonic() < deadline, "the slowed checkpoint write never started"
        time.sleep(0.05)
    proc.kill()
    proc.join()
    partial = list((run / "checkpoints").glob(".*.partial"))
    assert partial, "the kill should have left the interrupted write's temporary file"
    assert_whole(run)  # last.ckpt is the previous, whole one
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] \
        == VAL_EVERY
    finish(config)
    assert not list((run / "checkpoints").glob(".*.partial"))  # the orphan was removed
    assert "removed" in run_log(run)
    assert_complete(run)


@pytest.mark.extra("wandb")
def test_resume_continues_the_wandb_run_and_moves_an_old_log_aside(world: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "runs" / "run"
    config = write_config(world, run, max_steps=VAL_EVERY, wandb=True)
    assert wait(fit(config)) == 0
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["pixelkit_run"]
    config = write_config(world, run, max_steps=2 * VAL_EVERY, wandb=True)
    assert wait(fit(config, "--ckpt_path", "last")) == 0
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["pixelkit_run"]
    assert second["wandb_id"] == first["wandb_id"]  # the same W&B run goes on
    assert second["csv_rows"] > first["csv_rows"]
    # A new run (no --ckpt_path) into the same folder keeps the earlier log beside it.
    config = write_config(world, run, max_steps=1)
    assert wait(fit(config)) == 0
    kept = list((run / "csv").glob("metrics.*.csv"))
    assert len(kept) == 1 and len(kept[0].read_text().splitlines()) == second["csv_rows"] + 1


# --------------------------------------------------------------------------- bad images


def _break_images(world: Path, png_header) -> list[str]:
    """A missing and a decompression-bomb image in the train split (the readers refuse
    them), and a truncated one that is the first val image (its header reads: the loader
    meets it at every validation)."""
    train = sorted((world / "images" / "train").glob("*.png"))
    missing, bomb = train[0], train[1]
    truncated = sorted((world / "images" / "val").glob("*.png"))[0]
    missing.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    png_header(bomb, (40000, 40000))  # 1.6 G pixels declared; PIL's bomb limit is ~89 M
    return [missing.name, truncated.name, bomb.name]


def test_bad_images_are_skipped_and_counted(tmp_path: Path, png_header) -> None:
    world = tmp_path / "shapes"
    synthesize(world, num_images=40, image_size=64, seed=1, val_fraction=0.2, progress=False)
    names = _break_images(world, png_header)
    run = tmp_path / "runs" / "run"
    config = write_config(world, run, max_steps=6, max_bad_image_share=0.2)
    assert wait(fit(config)) == 0, run_log(run)[-4000:]
    with open(run / "csv" / "metrics.csv", newline="") as f:
        counts = [float(r["data/skipped_images"]) for r in csv.DictReader(f)
                  if r.get("data/skipped_images")]
    assert counts[0] == 2 and max(counts) == 3  # the readers' two, then the loader's one
    log = run_log(run)
    assert "skipped a bad image" in log and all(name in log for name in names)
    # Past the allowed share, the run stops with one line naming the files.
    config = write_config(world, tmp_path / "runs" / "strict", max_steps=6, max_bad_image_share=0.0)
    assert wait(fit(config)) == 2
    out = run_log(tmp_path / "runs" / "strict")
    assert "max_bad_image_share=0" in out and "Traceback" not in out
