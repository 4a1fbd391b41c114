"""Loggers that lose nothing: a resumed run continues its CSV log and its W&B run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so every
``pixelkit fit`` into the same folder, a ``--ckpt_path last`` resume included, wiped the
log of the run before it; and it rewrites the file in place when a new metric appears, so a
kill at that moment lost the whole log. :class:`CSVLogger` here:

* on a **resume** (``resume_rows`` given, which ``pixelkit fit --ckpt_path`` does from the
  checkpoint) keeps the rows that were logged up to the checkpoint and drops the later ones,
  which the resumed run logs again, so every step is in the file exactly once;
* on a **new run** moves an existing ``metrics.csv`` aside (``metrics.<time>.csv``)
  instead of deleting it;
* appends rows (flushed and ``fsync``-ed) and rewrites the file only atomically
  (:func:`pixelkit.files.atomic_write`) when its header grows.

What a checkpoint needs to resume the logs is :func:`run_state` (rows written, the CSV
version, the W&B run id); :func:`resume_logger_args` turns it back into logger arguments.
"""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from pixelkit.files import atomic_write

#: Key of the logging state in a checkpoint (see :func:`run_state`).
RUN_STATE_KEY = "pixelkit_run"


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that keeps (or continues) an existing log.

    Args:
        log_dir: the log folder.
        resume_rows: rows of an existing ``metrics.csv`` to keep (a resumed run); None:
            a new run, which moves an existing file aside.
    """

    def __init__(self, log_dir: str, resume_rows: int | None = None) -> None:
        self.resume_rows = resume_rows
        #: Rows in ``metrics.csv`` (written, not pending).
        self.rows = 0
        self._keys_from_file: list[str] = []
        super().__init__(log_dir=log_dir)  # calls _check_log_dir_exists
        if self._keys_from_file:
            self.metrics_keys = list(self._keys_from_file)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self.resume_rows is None:
            aside = f"{path[:-len('.csv')]}.{time.strftime('%Y%m%d-%H%M%S')}.csv"
            os.replace(path, aside)
            print(f"[pixelkit] a new run: the earlier log {path} was moved to {aside}")
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = []
            for row in reader:
                if len(rows) == self.resume_rows:
                    break
                if None in row or None in row.values():  # a line cut short by a kill
                    break
                rows.append(row)
        if len(rows) < self.resume_rows:
            print(f"[pixelkit] {path} holds {len(rows)} whole rows, the checkpoint "
                  f"expected {self.resume_rows}: continuing after them")
        self._write_all(keys, rows)
        self._keys_from_file, self.rows = keys, len(rows)

    def _write_all(self, keys: list[str], rows: list[dict[str, Any]]) -> None:
        """Replace metrics.csv with ``rows`` under header ``keys``, atomically."""
        with atomic_write(self.metrics_file_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def save(self) -> None:
        """Write the pending rows: appended, or the whole file atomically when the header
        grows (Lightning rewrites it in place)."""
        if self.hparams:  # Lightning 2.5 writes hparams.yaml here, later versions on log
            from lightning.pytorch.core.saving import save_hparams_to_yaml

            save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE),
                                 self.hparams)
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        path = self.metrics_file_path
        if new_keys or not os.path.isfile(path):
            old = []
            if os.path.isfile(path):
                with open(path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._write_all(self.metrics_keys, old + self.metrics)
        else:
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=self.metrics_keys,
                           lineterminator="\n").writerows(self.metrics)
            with open(path, "a", newline="") as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
        self.rows += len(self.metrics)
        self.metrics = []


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` with a log that survives new runs and resumes.

    Args:
        save_dir: where the log goes; ``pixelkit fit`` puts it in the run's folder when it
            is left out.
        name: the log's sub-folder (default ``csv``).
        version: a sub-folder below it; ``""`` (the default): none, one log per run folder,
            which a resumed run continues.
        resume_rows: set by ``pixelkit fit --ckpt_path`` from the checkpoint: the rows of
            ``metrics.csv`` logged up to it (None: a new run).
        **kwargs: Lightning's other ``CSVLogger`` arguments (``prefix``,
            ``flush_logs_every_n_steps``).
    """

    def __init__(self, save_dir: str | None = None, name: str = "csv",
                 version: int | str | None = "", resume_rows: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version,
                         **kwargs)
        self.resume_rows = resume_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            if "://" in str(self.root_dir):
                raise ValueError(f"pixelkit.loggers.CSVLogger writes local files only, not "
                                 f"{self.root_dir}; use lightning's CSVLogger there")
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(self.log_dir, self.resume_rows)
        return self._experiment

    @property
    def rows_written(self) -> int:
        """Rows of ``metrics.csv`` on disk once the pending ones are saved."""
        self.save()
        return self.experiment.rows


def run_state(loggers: list[Any]) -> dict[str, Any]:
    """What a checkpoint keeps to resume the logs: CSV rows and version, W&B run id.

    Called (on the rank that writes checkpoints) while a checkpoint is written, so the
    pending CSV rows are flushed first: the rows it counts are exactly those logged before
    the checkpoint.
    """
    state: dict[str, Any] = {}
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            state["csv_rows"] = logger.rows_written
            state["csv_version"] = logger.version
        elif type(logger).__name__ == "WandbLogger":
            state["wandb_id"] = str(logger.version)
    return state


def resume_logger_args(class_path: str, state: dict[str, Any]) -> dict[str, Any]:
    """Logger arguments that continue the logs of a checkpoint's :func:`run_state`.

    Args:
        class_path: the logger's class path in the config.
        state: the checkpoint's run state (may be empty: a checkpoint of older pixelkit).
    """
    if class_path.endswith("pixelkit.loggers.CSVLogger") and "csv_rows" in state:
        return {"resume_rows": int(state["csv_rows"]), "version": state["csv_version"]}
    if class_path.endswith("WandbLogger") and state.get("wandb_id"):
        return {"id": state["wandb_id"], "resume": "allow"}
    return {}
