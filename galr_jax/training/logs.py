"""Training logs: ``metrics.jsonl``, TensorBoard scalars and a tqdm progress bar.

``WORKDIR/metrics.jsonl`` holds one JSON object per record: ``step``, ``loss`` (mean
training loss since the previous record, null if every step of that window was
skipped) and, on validation records, ``val_si_snri``. Non-finite numbers are written
as null so every line is valid JSON.

When a run resumes from step ``s``, records past ``s`` (written before a crash, and
about to be written again) are dropped from the JSONL file and TensorBoard is told to
purge them too, so both show one clean curve.

TensorBoard uses ``tensorboardX``: it writes the event files with protobuf alone,
with no TensorFlow dependency (the ``tensorboard`` package is only needed to view
them). It is imported only when enabled (``train.tensorboard``), because it also
imports PyTorch when that is installed, which costs seconds at start-up.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Optional

import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl`` (empty if there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites ``path`` without records past ``step`` (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(json.dumps(record) + "\n")
    if len(kept) == len(lines):
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricLogger:
    """Writes records to the JSONL file and TensorBoard (on the primary process only).

    Args:
      workdir: the run's folder.
      start_step: the step the run starts or resumes from.
      enabled: False on non-primary processes (every method is then a no-op).
      tensorboard: also write TensorBoard scalars to ``workdir/tensorboard``.
    """

    def __init__(self, workdir: str, start_step: int, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self._path = os.path.join(workdir, METRICS_FILE)
        self._file = None
        self._writer = None
        if not enabled:
            return
        _drop_records_after(self._path, start_step)
        self._file = open(self._path, "a")
        if tensorboard:
            import tensorboardX
            self._writer = tensorboardX.SummaryWriter(
                os.path.join(workdir, TENSORBOARD_SUBDIR),
                purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        """Appends one record (flushed, so a kill loses at most the line being written)."""
        if not self.enabled:
            return
        line = {"step": int(step), **{k: _json_number(v) for k, v in record.items()}}
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
