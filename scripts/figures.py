"""Draws the documentation's figures, ``docs/figures/*.png``, from files in the repository.

    python scripts/figures.py

Inputs, all written by the project's own programs:

* ``docs/figures/data/*_metrics.jsonl``: training runs' ``metrics.jsonl`` (train.py),
  drawn with :mod:`galr_jax.plot` as ``training_curve_*.png``;
* ``docs/figures/data/separation/``: one test mixture with its references and the
  estimates of a trained model, its ``per_utterance.csv`` row and the ``summary.json``
  (``eval.py --save-audio 1``), drawn as spectrograms in ``separation.png``;
* ``benchmarks/results.json`` and ``benchmarks/results_w2.json`` (benchmarks/run.py),
  drawn as ``jax_vs_torch.png`` and ``galr_vs_dprnn.png``;
* nothing for ``architecture.png``: the model's data flow, drawn from the text below
  (galr_jax/models/separation.py and galr.py in boxes and arrows).

The data files are copies, refreshed by the same script (this repository's runs live
outside it)::

    python scripts/figures.py --import-run voices_8k=/path/to/runs/galr_voices_8k
    python scripts/figures.py --import-separation EVAL_OUT   # an eval.py --out with audio/

PNGs are written with a 256-colour palette, which keeps each under ``MAX_PNG_BYTES``
(spectrograms do not compress well as full-colour PNG). docs/figures.md shows them.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import scipy.signal
import soundfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.plot import curve_from_records, draw_curves, new_figure  # noqa: E402
from galr_jax.training.logs import METRICS_FILE  # noqa: E402

FIGURES = REPO / "docs" / "figures"
DATA = FIGURES / "data"
SEPARATION = DATA / "separation"
METRICS_SUFFIX = "_metrics.jsonl"
# The benchmark files drawn: the paper's windows at 4 s and 1 s, window 2 at 1 s.
BENCHMARK_FILES = ("results.json", "results_w2.json")
MAX_PNG_BYTES = 150_000
PALETTE_COLOURS = 256
GIB = 2.0 ** 30
# Spectrograms: 32 ms Hann windows with a 8 ms hop at 8 kHz; 70 dB of range below the
# mixture's peak (quieter bins are noise floor).
STFT_SECONDS, HOP_SECONDS, DYNAMIC_RANGE_DB = 0.032, 0.008, 70.0
# A colour per 5 dB: the steps are easy to read, and the noise-like texture of quiet bins
# compresses (a continuous colour map puts the PNG over MAX_PNG_BYTES).
SPECTROGRAM_LEVELS = 14
SEPARATION_TRACKS = ("mix", "s1_ref", "s1_est", "s2_ref", "s2_est")
FRAMEWORK_COLOURS = {"jax": "tab:blue", "torch": "tab:orange"}


def save_png(figure, name: str, out: pathlib.Path) -> pathlib.Path:
    """Writes ``out/name`` as a palette PNG; fails if it is over ``MAX_PNG_BYTES``."""
    from PIL import Image  # matplotlib's own dependency
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    image = Image.open(buffer).convert("RGB").quantize(PALETTE_COLOURS, dither=Image.Dither.NONE)
    path = out / name
    image.save(path, optimize=True)
    size = path.stat().st_size
    if size > MAX_PNG_BYTES:
        raise SystemExit(f"{path}: {size} bytes, over the {MAX_PNG_BYTES} limit for the repository")
    print(f"wrote {path} ({size // 1000} KB)")
    return path


# ---- Data import ------------------------------------------------------------------------

def import_run(spec: str) -> None:
    """``NAME=WORKDIR``: copies WORKDIR/metrics.jsonl to ``DATA/NAME_metrics.jsonl``."""
    name, _, workdir = spec.partition("=")
    if not name or not workdir:
        raise SystemExit(f"--import-run {spec!r}: expected NAME=WORKDIR")
    DATA.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.join(workdir, METRICS_FILE), DATA / f"{name}{METRICS_SUFFIX}")


def import_separation(eval_out: str) -> None:
    """Copies the first utterance eval.py saved (``EVAL_OUT/audio``) as 16-bit FLAC."""
    mixtures = sorted(glob.glob(os.path.join(eval_out, "audio", "*_mix.wav")))
    if not mixtures:
        raise SystemExit(f"{eval_out}/audio: no *_mix.wav (run eval.py with --save-audio 1)")
    utterance = os.path.basename(mixtures[0])[:-len("_mix.wav")]
    SEPARATION.mkdir(parents=True, exist_ok=True)
    for track in SEPARATION_TRACKS:
        audio, rate = soundfile.read(os.path.join(eval_out, "audio", f"{utterance}_{track}.wav"))
        soundfile.write(SEPARATION / f"{track}.flac", audio, rate, subtype="PCM_16")
    with open(os.path.join(eval_out, "per_utterance.csv")) as f:
        rows = [row for row in csv.DictReader(f) if row["id"] == utterance]
    with open(SEPARATION / "per_utterance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copyfile(os.path.join(eval_out, "summary.json"), SEPARATION / "summary.json")


# ---- Figures ----------------------------------------------------------------------------

def training_curves(out: pathlib.Path) -> None:
    for path in sorted(DATA.glob(f"*{METRICS_SUFFIX}")):
        name = path.name[:-len(METRICS_SUFFIX)]
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        figure = draw_curves({name: curve_from_records(records, str(path))},
                             f"training curve: {name}")
        save_png(figure, f"training_curve_{name}.png", out)


def _spectrogram_db(audio: np.ndarray, rate: int) -> tuple[np.ndarray, ...]:
    window = int(STFT_SECONDS * rate)
    frequencies, times, stft = scipy.signal.stft(audio, rate, nperseg=window,
                                                 noverlap=window - int(HOP_SECONDS * rate))
    return frequencies, times, 20 * np.log10(np.abs(stft) + 1e-12)


def separation(out: pathlib.Path) -> None:
    tracks = {}
    for track in SEPARATION_TRACKS:
        audio, rate = soundfile.read(SEPARATION / f"{track}.flac", dtype="float32")
        tracks[track] = _spectrogram_db(audio, rate)
    with open(SEPARATION / "per_utterance.csv") as f:
        (scores,) = list(csv.DictReader(f))
    with open(SEPARATION / "summary.json") as f:
        step = json.load(f)["step"]
    top = tracks["mix"][2].max()
    import matplotlib
    colours = matplotlib.colormaps["magma"].resampled(SPECTROGRAM_LEVELS)
    figure = new_figure((10.0, 7.0))
    grid = figure.add_gridspec(3, 2)
    panels = {"mix": grid[0, :], "s1_ref": grid[1, 0], "s1_est": grid[1, 1],
              "s2_ref": grid[2, 0], "s2_est": grid[2, 1]}
    titles = {"mix": "mixture", "s1_ref": "speaker 1: reference", "s2_ref": "speaker 2: reference",
              "s1_est": "speaker 1: separated", "s2_est": "speaker 2: separated"}
    for track, cell in panels.items():
        ax = figure.add_subplot(cell)
        frequencies, times, db = tracks[track]
        image = ax.pcolormesh(times, frequencies / 1000, db, vmin=top - DYNAMIC_RANGE_DB,
                              vmax=top, cmap=colours, shading="auto", rasterized=True)
        ax.set_title(titles[track], fontsize=10)
        ax.set_ylabel("kHz")
    ax.set_xlabel("seconds")
    figure.colorbar(image, ax=figure.axes, label="dB", shrink=0.6)
    figure.suptitle(f"{scores['id']}\nseparated by the checkpoint of step {step}: SI-SNRi "
                    f"{float(scores['si_snri']):.1f} dB, SDRi {float(scores['sdri']):.1f} dB")
    save_png(figure, "separation.png", out)


def _benchmarks() -> list[dict]:
    results = []
    for name in BENCHMARK_FILES:
        with open(REPO / "benchmarks" / name) as f:
            results += json.load(f)["results"]
    return results


def _bars(ax, groups: list[str], series: dict[str, list[float]], colours: dict, unit: str,
          labels_format: str) -> None:
    width = 0.8 / len(series)
    positions = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(positions + (i - (len(series) - 1) / 2) * width, values, width,
                      label=name, color=colours.get(name))
        ax.bar_label(bars, [labels_format.format(v) for v in values], fontsize=7)
    ax.set_xticks(positions, groups, fontsize=8)
    ax.set_ylabel(unit)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)


def jax_vs_torch(results: list[dict], out: pathlib.Path) -> None:
    """Training-step time and peak RSS (the same VmHWM measurement for both)."""
    keys = sorted({(r["model"], r["seconds"]) for r in results}, key=lambda k: (-k[1], k[0]))
    groups = [f"{model}\n{seconds:g} s" for model, seconds in keys]
    by_key = {(r["model"], r["seconds"], r["framework"]): r for r in results}
    figure = new_figure((10.0, 6.5))
    top, bottom = figure.subplots(2, 1)
    for ax, field, scale, unit, fmt in (
            (top, "step_s", 1.0, "training step (s, median)", "{:.2f}"),
            (bottom, "step_rss_peak_bytes", GIB, "training step peak RSS (GiB)", "{:.2f}")):
        series = {framework: [by_key[(*key, framework)][field] / scale for key in keys]
                  for framework in FRAMEWORK_COLOURS}
        _bars(ax, groups, series, FRAMEWORK_COLOURS, unit, fmt)
    top.legend()
    figure.suptitle("JAX vs PyTorch on the CPU, batch 4 (benchmarks/results*.json)")
    save_png(figure, "jax_vs_torch.png", out)


def galr_vs_dprnn(results: list[dict], out: pathlib.Path) -> None:
    """Parameters, FLOPs and step memory of each config (JAX), GALR next to DPRNN."""
    jax_results = [r for r in results if r["framework"] == "jax"]
    keys = sorted({(r["model"], r["seconds"]) for r in jax_results}, key=lambda k: (-k[1], k[0]))
    by_key = {(r["model"], r["seconds"]): r for r in jax_results}
    groups = [f"{model}\n{seconds:g} s" for model, seconds in keys]
    colours = {key: ("tab:green" if key[0].startswith("galr") else "tab:gray") for key in keys}
    figure = new_figure((10.0, 7.5))
    axes = figure.subplots(3, 1)
    for ax, field, scale, unit, fmt in (
            (axes[0], "params", 1e6, "parameters (M)", "{:.2f}"),
            (axes[1], "step_flops", 1e9, "training step GFLOP", "{:.0f}"),
            (axes[2], "step_peak_bytes", GIB, "training step peak (GiB, XLA)", "{:.2f}")):
        values = [by_key[key][field] / scale for key in keys]
        _bars(ax, groups, {unit: values}, {}, unit, fmt)
        for patch, key in zip(ax.patches, keys):
            patch.set_color(colours[key])
    figure.suptitle("GALR (green) vs DPRNN (grey): cost per training step, batch 4, JAX on the CPU")
    save_png(figure, "galr_vs_dprnn.png", out)


# The architecture diagram: each box is (x, y, width, height) in a 100 x 50 canvas, and
# its text; the shapes are the tensors the box outputs (galr_jax/models/separation.py).
ARCHITECTURE_SIZE = (11.0, 5.0)  # inches: readable at the README's width
ARCHITECTURE_BOXES = {
    "mixture": ((1, 38, 11, 8), "mixture\n[B, T]"),
    "encoder": ((16, 38, 22, 8), "Encoder\nConv1d: window L, hop L/2, ReLU\n[B, F, N]"),
    "bottleneck": ((42, 38, 16, 8), "Bottleneck\nlinear N \u2192 D\n[B, F, D]"),
    "segment": ((62, 38, 24, 8), "Segmentation\nK-frame segments, hop K/2\n[B, S, K, D]"),
    "local": ((6, 19, 42, 11), "Locally recurrent\nBiLSTM along the K frames of every segment\n"
              "(H units a direction, learnable initial state)\nlinear 2H \u2192 D, gLN, + residual"),
    "global": ((53, 19, 43, 11), "Globally attentive\nK \u2192 Q per segment (low-dimensional "
               "representation)\nLayerNorm + segment position, multi-head self-attention\n"
               "across the S segments, Q \u2192 K, gLN, + residual"),
    "mask": ((1, 2, 34, 10), "Mask head\nPReLU, 1\u00d71 conv D \u2192 C\u00b7D, overlap-add "
             "to frames,\ngated tanh \u00b7 sigmoid, 1\u00d71 conv D \u2192 N, mask\n"
             "[B, C, F, N]"),
    "multiply": ((40, 3, 14, 8), "masks \u00d7 the\nencoder's frames\n[B, C, F, N]"),
    "decoder": ((59, 3, 20, 8), "Decoder\ntransposed conv, window L\n[B, C, T]"),
    "sources": ((84, 3, 15, 8), "C separated\nsources"),
}
ARCHITECTURE_ARROWS = (("mixture", "encoder"), ("encoder", "bottleneck"),
                       ("bottleneck", "segment"), ("local", "global"), ("mask", "multiply"),
                       ("multiply", "decoder"), ("decoder", "sources"))
BLOCK_FRAME = (3, 16, 95, 19)  # around "local" and "global": the repeated GALR block
ARCHITECTURE_COLOURS = {"local": "#d9ead3", "global": "#cfe2f3"}


def architecture(out: pathlib.Path) -> None:
    """The data flow of GALR from waveform to separated sources, with tensor shapes."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    figure = new_figure(ARCHITECTURE_SIZE)
    figure.set_layout_engine("none")  # one axes filling the figure: nothing to lay out
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 50)
    ax.axis("off")
    x, y, w, h = BLOCK_FRAME
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3", facecolor="#f6f6f6",
                                edgecolor="grey", linestyle="--"))
    ax.text(x + w / 2, y + h - 1.3, "GALR block, repeated num_blocks times "
            "(DPRNN: two BiLSTMs, within and across segments)", ha="center", va="center",
            fontsize=9, style="italic")
    centres = {}
    for name, ((x, y, w, h), text) in ARCHITECTURE_BOXES.items():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3",
                                    facecolor=ARCHITECTURE_COLOURS.get(name, "white"),
                                    edgecolor="black"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
        centres[name] = (x, y, w, h)

    def arrow(start, end, **options):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                     shrinkA=0, shrinkB=0, **options))

    for a, b in ARCHITECTURE_ARROWS:
        (xa, ya, wa, ha), (xb, yb, wb, hb) = centres[a], centres[b]
        arrow((xa + wa + 0.4, ya + ha / 2), (xb - 0.4, yb + hb / 2))
    sx, sy, sw, _ = centres["segment"]
    fx, fy, fw, fh = BLOCK_FRAME
    arrow((sx + sw / 2, sy - 0.4), (sx + sw / 2, fy + fh + 0.4))
    arrow((fx + 12, fy - 0.4), (fx + 12, centres["mask"][1] + centres["mask"][3] + 0.4))
    save_png(figure, "architecture.png", out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--import-run", action="append", default=[], metavar="NAME=WORKDIR",
                        help="copy a run's metrics.jsonl into docs/figures/data first")
    parser.add_argument("--import-separation", metavar="EVAL_OUT",
                        help="copy the first utterance eval.py saved under EVAL_OUT/audio first")
    parser.add_argument("--out", type=pathlib.Path, default=FIGURES,
                        help="folder for the PNGs (default: docs/figures)")
    args = parser.parse_args()
    for spec in args.import_run:
        import_run(spec)
    if args.import_separation:
        import_separation(args.import_separation)
    args.out.mkdir(parents=True, exist_ok=True)
    architecture(args.out)
    training_curves(args.out)
    separation(args.out)
    results = _benchmarks()
    jax_vs_torch(results, args.out)
    galr_vs_dprnn(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
