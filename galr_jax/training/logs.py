"""Training logs: ``metrics.jsonl``, TensorBoard scalars and a tqdm progress bar.

``WORKDIR/metrics.jsonl`` holds one JSON object per record: ``step``, ``time`` (Unix
seconds when it was written; absent in files from before it was added), ``loss`` (mean
training loss since the previous record, null if every step of that window was
skipped) and, on validation records, ``val_si_snri``. Non-finite numbers are written
as null so every line is valid JSON.

When a run resumes from step ``s``, records past ``s`` (written before a crash, and
about to be written again) are dropped from the JSONL file and TensorBoard is told to
purge them too, so both show one clean curve.

TensorBoard uses ``tensorboardX``: it writes the event files with protobuf alone,
with no TensorFlow dependency (the ``tensorboard`` package is only needed to view
them), to local folders and to ``gs://`` itself. It is imported only when enabled
(``train.tensorboard``), because it also imports PyTorch when that is installed, which
costs seconds at start-up.

Paths are :mod:`etils.epath` paths, so a workdir may be a cloud URL. Object stores
cannot append to a file: there the JSONL file is kept in memory and rewritten whole,
at most every ``REMOTE_UPLOAD_SECONDS`` and when the logger closes (so a killed run
may lose the last minute of records; its checkpoints are unaffected).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping, Optional

import tqdm
from etils import epath

from galr_jax.training.checkpoints import PathLike, as_path, is_remote

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
REMOTE_UPLOAD_SECONDS = 60.0  # a cloud workdir's metrics.jsonl is rewritten at most this often


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(workdir: PathLike) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl`` (empty if there is none)."""
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kept_records(path: epath.Path, step: int) -> tuple[list[str], bool]:
    """The lines of ``path`` up to ``step``, and whether any line was dropped."""
    if not path.exists():
        return [], False
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(json.dumps(record) + "\n")
    return kept, len(kept) != len(lines)


def _write_atomically(path: epath.Path, text: str) -> None:
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


class MetricLogger:
    """Writes records to the JSONL file and TensorBoard (on the primary process only).

    Args:
      workdir: the run's folder.
      start_step: the step the run starts or resumes from.
      enabled: False on non-primary processes (every method is then a no-op).
      tensorboard: also write TensorBoard scalars to ``workdir/tensorboard``.
    """

    def __init__(self, workdir: PathLike, start_step: int, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        workdir = as_path(workdir)
        self._path = workdir / METRICS_FILE
        self._file = None
        self._writer = None
        self._remote_lines: Optional[list[str]] = None  # a cloud workdir's records
        self._uploaded = 0.0
        if not enabled:
            return
        kept, dropped = _kept_records(self._path, start_step)
        if is_remote(self._path):
            self._remote_lines = kept
        else:
            if dropped:
                _write_atomically(self._path, "".join(kept))
            self._file = self._path.open("a")
        if tensorboard:
            import tensorboardX
            self._writer = tensorboardX.SummaryWriter(
                str(workdir / TENSORBOARD_SUBDIR),
                purge_step=start_step + 1 if start_step else None)

    def _upload(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._uploaded >= REMOTE_UPLOAD_SECONDS:
            _write_atomically(self._path, "".join(self._remote_lines))
            self._uploaded = now

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        """Appends one record (flushed, so a kill loses at most the line being written)."""
        if not self.enabled:
            return
        line = {"step": int(step), "time": time.time(),
                **{k: _json_number(v) for k, v in record.items()}}
        if self._remote_lines is not None:
            self._remote_lines.append(json.dumps(line) + "\n")
            self._upload(force=False)
        else:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        if self._writer is None:
            return
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._remote_lines is not None:
            self._upload(force=True)
            self._remote_lines = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Progress:
    """tqdm bar over the run's steps showing steps/s and the latest fetched loss.

    Args:
      start_step, num_steps: the range of this run's steps.
      enabled: False on non-primary processes.
    """

    def __init__(self, start_step: int, num_steps: int, enabled: bool = True):
        self._bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=not enabled,
                              desc="train", unit="step", dynamic_ncols=True)

    def update(self, loss: Optional[float] = None) -> None:
        """Advances one step (and shows ``loss`` if given)."""
        if loss is not None:
            self.show_loss(loss)
        self._bar.update(1)

    def show_loss(self, loss: float) -> None:
        """Shows the loss of the newest step the host has fetched."""
        self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def write(self, message: str) -> None:
        """Prints a line above the bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()


class WindowAverage:
    """Mean of the finite training losses (and other scalars) since the last record."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._steps = 0
        self._start = time.perf_counter()

    def add(self, metrics: Mapping[str, float]) -> None:
        self._steps += 1
        for name, value in metrics.items():
            if math.isfinite(value):
                self._sums[name] = self._sums.get(name, 0.0) + value
                self._counts[name] = self._counts.get(name, 0) + 1

    def summary(self) -> dict[str, float]:
        """Means since the last reset, and ``steps_per_second`` over that window."""
        means = {name: self._sums[name] / self._counts[name] for name in self._sums}
        elapsed = time.perf_counter() - self._start
        if self._steps and elapsed > 0:
            means["steps_per_second"] = self._steps / elapsed
        return means
