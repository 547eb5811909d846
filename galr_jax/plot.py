"""Draws a run's training curve from its ``WORKDIR/metrics.jsonl``.

    python -m galr_jax.plot --workdir runs/demo --out curve.png

Four panels: the training loss (negative SI-SNR, dB) and the validation SI-SNRi (dB)
against the step and against wall time. Wall time comes from each record's ``time``
(Unix seconds, written by :class:`galr_jax.training.logs.MetricLogger`), in hours
since the first record, so a resumed run shows the time it was down. A file with a
record from before records carried a ``time`` (an older run, or one resumed by newer
code) gets an estimate instead, the sum of each window's steps over its
``steps_per_second``: training time only, without compilation and validation, and
the axis says so.

Needs matplotlib (``pip install 'galr-jax[plot]'``); it is imported only when drawing.
The figure is built on an Agg canvas, not through ``pyplot``, so drawing changes no
global matplotlib state of the calling program.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from typing import Any, Mapping, Optional, Sequence

from galr_jax.training.checkpoints import PathLike, as_path
from galr_jax.training.logs import METRICS_FILE, read_metrics

SECONDS_PER_HOUR = 3600.0
DEFAULT_OUT = "training_curve.png"
FIGURE_SIZE = (10.0, 6.0)  # inches: four panels readable on a laptop screen
DPI = 100
MATPLOTLIB_PIN = "matplotlib==3.10.8"  # setup.cfg's ``plot`` extra


class PlotError(ValueError):
    """The workdir has nothing to draw; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Curve:
    """A run's logged series, ready to draw.

    ``train_*`` are the records with a finite loss, ``val_*`` the validation records;
    ``*_hours`` are wall-clock hours since the first record, or estimated training
    hours when ``measured_time`` is False.
    """

    train_steps: list[int]
    train_hours: list[float]
    loss: list[float]
    val_steps: list[int]
    val_hours: list[float]
    val_si_snri: list[float]
    measured_time: bool


def _hours(records: Sequence[Mapping[str, Any]]) -> tuple[list[float], bool]:
    """Each record's hours since the first one (measured), else estimated from steps/s."""
    if all(isinstance(r.get("time"), (int, float)) for r in records):
        start = records[0]["time"]
        return [(r["time"] - start) / SECONDS_PER_HOUR for r in records], True
    hours, elapsed, previous_step = [], 0.0, 0
    for record in records:
        rate = record.get("steps_per_second")
        if rate:  # null when the window had no finished step to time
            elapsed += (record["step"] - previous_step) / rate / SECONDS_PER_HOUR
        previous_step = record["step"]
        hours.append(elapsed)
    return hours, False


def curve_from_records(records: Sequence[Mapping[str, Any]], where: str) -> Curve:
    """The :class:`Curve` of metrics.jsonl records (``where`` names them in errors)."""
    if not records:
        raise PlotError(f"{where}: no training records to draw")
    hours, measured = _hours(records)
    train = [(r["step"], h, r["loss"]) for r, h in zip(records, hours)
             if r.get("loss") is not None]
    val = [(r["step"], h, r["val_si_snri"]) for r, h in zip(records, hours)
           if r.get("val_si_snri") is not None]
    train_steps, train_hours, loss = map(list, zip(*train)) if train else ([], [], [])
    val_steps, val_hours, val_si_snri = map(list, zip(*val)) if val else ([], [], [])
    return Curve(train_steps, train_hours, loss, val_steps, val_hours, val_si_snri, measured)


def load_curve(workdir: PathLike) -> Curve:
    """The :class:`Curve` of ``workdir/metrics.jsonl``.

    Raises:
      PlotError: the file is missing or holds no record.
    """
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        raise PlotError(f"{path}: not found (is {workdir} a training workdir?)")
    return curve_from_records(read_metrics(workdir), str(path))


def new_figure(size: tuple[float, float] = FIGURE_SIZE, dpi: int = DPI):
    """An empty matplotlib ``Figure`` on its own Agg canvas (no ``pyplot`` state).

    Raises:
      ModuleNotFoundError: matplotlib is not installed; the message says how to get it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"drawing needs matplotlib ({e}); install it with "
            f"pip install 'galr-jax[plot]' (or {MATPLOTLIB_PIN})") from None
    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def draw_curves(curves: Mapping[str, Curve], title: Optional[str] = None):
    """A matplotlib ``Figure``: loss and validation SI-SNRi against steps and hours.

    ``curves`` maps a legend label to each run's :class:`Curve` (several runs share the
    axes; a single run needs no legend).
    """
    figure = new_figure()
    axes = figure.subplots(2, 2, sharex="col")
    for label, curve in curves.items():
        axes[0, 0].plot(curve.train_steps, curve.loss, label=label)
        axes[0, 1].plot(curve.train_hours, curve.loss, label=label)
        axes[1, 0].plot(curve.val_steps, curve.val_si_snri, "o-", label=label)
        axes[1, 1].plot(curve.val_hours, curve.val_si_snri, "o-", label=label)
    measured = all(curve.measured_time for curve in curves.values())
    axes[0, 0].set_ylabel("training loss (-SI-SNR, dB)")
    axes[1, 0].set_ylabel("validation SI-SNRi (dB)")
    axes[1, 0].set_xlabel("step")
    axes[1, 1].set_xlabel("wall-clock hours" if measured else
                          "training hours (from steps/s; compile and validation left out)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    if len(curves) > 1:
        axes[1, 0].legend()
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure, out: PathLike) -> None:
    """Writes ``figure`` as PNG to ``out`` (local or an :mod:`etils.epath` URL)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    as_path(out).write_bytes(buffer.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m galr_jax.plot",
        description="Draw a run's training loss and validation SI-SNRi against steps and "
                    "wall time, from WORKDIR/metrics.jsonl.")
    parser.add_argument("--workdir", required=True, help="training workdir")
    parser.add_argument("--out", help=f"PNG to write (default: WORKDIR/{DEFAULT_OUT})")
    parser.add_argument("--title", help="figure title (default: the workdir)")
    args = parser.parse_args(argv)
    out = args.out or as_path(args.workdir) / DEFAULT_OUT
    try:
        figure = draw_curves({args.workdir: load_curve(args.workdir)}, args.title or args.workdir)
    except (PlotError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_figure(figure, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
