"""Scores a checkpoint on a test split: per-utterance CSV, summary JSON, a printed table.

The scoring is :func:`galr_jax.evaluation.scoring.evaluate`, the code validation runs during
training, with the same buckets and batch size from the config; the SI-SNRi that
``eval.py`` reports for a checkpoint is therefore the number training logged for it on
the same split. SI-SNR(i) is computed in JAX; SDR(i) with BSS-eval's 512-tap
projection in :mod:`galr_jax.evaluation.metrics` (numpy/scipy, checked against mir_eval there);
PESQ and STOI are added when the ``pesq`` / ``pystoi`` packages are installed. The
model runs on every local device (the batch is split over them) and is given each
row's valid length, so the scores do not depend on ``eval.bucket_seconds``. Its calls
are computations of this process alone, as in validation
(:mod:`galr_jax.training.validation` explains the multi-host design), so ``eval.py``
cannot hang waiting for another process, whatever else runs beside it.

The weights come from a training workdir (``--workdir``), a checkpoint directory
(``--checkpoint``) or a pretrained model shipped with the package (``--model NAME``,
see :mod:`galr_jax.pretrained`; it needs ``--data`` and ``--out``).

Outputs in ``OUT`` (``--out``; default ``WORKDIR/eval/SPLIT``):

* ``per_utterance.csv``: id, length, si_snr, si_snri, sdr, sdri, [pesq, stoi],
  permutation (estimate index per reference, space separated);
* ``summary.json``: ``si_snri``, ``sdri``, ... (means), ``<metric>_median``,
  ``count``, ``step``, the skipped files, the config, the checkpoint and versions;
* ``audio/`` (with ``--save-audio N``): mixture, references and estimates (in
  reference order) of the first N utterances.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np
from etils import epath

import galr_jax
from galr_jax import pretrained
from galr_jax.cli_logging import configure_logging
from galr_jax.config import (Config, ConfigError, add_override_argument, config_from_dict,
                             config_to_dict, load_config)
from galr_jax.data import DatasetError, UtteranceReader, open_split
from galr_jax.data.audio import AudioError, write_audio
from galr_jax.evaluation import metrics, scoring
from galr_jax.inference.apply import BatchedApply
from galr_jax.training.checkpoints import (CheckpointError, PathLike, as_path, is_remote,
                                           parse_which, restore_variables)

EXIT_ERROR = 2  # usage, checkpoint, config or data error
EVAL_SUBDIR = "eval"
INDEX_SUBDIR = "index"  # where the split's length index is cached (as training does)
CSV_NAME = "per_utterance.csv"
SUMMARY_NAME = "summary.json"
AUDIO_SUBDIR = "audio"
METRIC_COLUMNS = ("si_snr", "si_snri", "sdr", "sdri", "pesq", "stoi")
PRETRAINED_PREFIX = "pretrained:"  # summary.json's "checkpoint" for --model
SDR_METHOD = ("BSS-eval SDR, 512-tap distortion filter (galr_jax.evaluation.metrics; "
              "agrees with mir_eval)")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score a checkpoint on a test split (SI-SNRi, SDRi).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir (uses WORKDIR/checkpoints)")
    source.add_argument("--checkpoint", help="checkpoint directory (e.g. from galr-convert); "
                                             "needs --config and --out")
    source.add_argument("--model", metavar="NAME",
                        help="a pretrained model shipped with galr-jax (galr-separate "
                             "--list-models); needs --data and --out")
    parser.add_argument("--config", help="config file the weights must fit (with --checkpoint); "
                                         "default: the config saved with the checkpoint")
    parser.add_argument("--which", default=None,
                        help="with --workdir/--checkpoint: best (default), latest or a step number")
    parser.add_argument("--data", help="data root (overrides data.root)")
    parser.add_argument("--split", help="split to score (default: data.test_split)")
    parser.add_argument("--out", help="output directory (default: WORKDIR/eval/SPLIT)")
    add_override_argument(parser, dest="set")
    parser.add_argument("--no-sdr", action="store_true", help="skip BSS-eval SDR (faster)")
    parser.add_argument("--no-perceptual", action="store_true",
                        help="skip PESQ/STOI even if their packages are installed")
    parser.add_argument("--save-audio", type=int, default=None, metavar="N",
                        help="save audio of the first N utterances "
                             "(default: eval.save_audio_examples)")
    parser.add_argument("--max-utterances", type=int, default=None, metavar="N",
                        help="score only the first N utterances of the split")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.out:
        parser.error("--checkpoint needs --out (where to write the results)")
    if args.model and not (args.out and args.data):
        parser.error("--model needs --data (the corpus) and --out (where to write the results)")
    if args.model and (args.config or args.which):
        parser.error("--model: the model fixes its weights and config (no --config or --which)")
    return args



def _with_overrides(saved: Config, overrides: Sequence[str]) -> Config:
    """The checkpoint's config with ``--set`` overrides; weight-shaping fields stay fixed."""
    config = config_from_dict(config_to_dict(saved), overrides)
    for key, value in config_to_dict(config)["model"].items():
        if value != getattr(saved.model, key):
            raise ConfigError(f"model.{key}: cannot be changed for evaluation (the checkpoint has "
                              f"{getattr(saved.model, key)!r}); the runtime section can")
    return config


def load_for_eval(args: argparse.Namespace) -> tuple[Config, Any, dict]:
    """Restores weights and builds the evaluation config from the command line."""
    overrides = list(args.set) + ([f"data.root={args.data}"] if args.data else [])
    if args.model:
        model = pretrained.load(args.model)
        meta = {"step": model.manifest.get("step", -1), "metrics": {}}
        return _with_overrides(model.config, overrides), model.variables, meta
    path = args.workdir or args.checkpoint
    which = parse_which(args.which or "best")
    if args.config:
        given = load_config(args.config, overrides)
        variables, meta = restore_variables(path, config=given, which=which)
        return given, variables, meta
    variables, meta = restore_variables(path, which=which)
    return _with_overrides(meta["config"], overrides), variables, meta


def _remember_first(utterances, count: int, kept: list) -> Iterator[tuple]:
    """Passes utterances through, keeping the first ``count`` for listening examples."""
    for utterance in utterances:
        if len(kept) < count:
            kept.append(utterance)
        yield utterance.id, utterance.mixture, utterance.sources


def save_examples(apply: BatchedApply, examples: list, records: dict, config: Config,
                  out_dir: PathLike) -> None:
    """Writes mixture, references and estimates (in reference order) of some utterances.

    The estimates are recomputed with the padded shape scoring used, so they are the
    ones that were scored. For a cloud ``out_dir`` each file is written locally, then
    copied.
    """
    folder = as_path(out_dir) / AUDIO_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as local:
        _write_examples(apply, examples, records, config, local)
        for name in sorted(os.listdir(local)):
            epath.Path(local, name).copy(folder / name, overwrite=True)


def _write_examples(apply: BatchedApply, examples: list, records: dict, config: Config,
                    folder: str) -> None:
    rate = config.model.sample_rate
    buckets = scoring.buckets_in_samples(config.eval.bucket_seconds, rate)
    rows = scoring.padded_batch_size(config.eval.batch_size, apply.num_devices)
    for utterance in examples:
        length = utterance.mixture.shape[0]
        padded_length = scoring.bucket_length(length, buckets)
        batch = np.zeros((rows, padded_length), np.float32)
        batch[0, :length] = utterance.mixture
        lengths = np.zeros((rows,), np.int32)
        lengths[0] = length
        estimates = apply(batch, scoring.model_lengths(lengths, padded_length))
        estimates = estimates[0, :, :length][records[utterance.id]["permutation"]]
        write_audio(os.path.join(folder, f"{utterance.id}_mix.wav"), utterance.mixture, rate,
                    overwrite=True)
        for c, (reference, estimate) in enumerate(zip(utterance.sources, estimates)):
            write_audio(os.path.join(folder, f"{utterance.id}_s{c + 1}_ref.wav"), reference, rate,
                        overwrite=True)
            write_audio(os.path.join(folder, f"{utterance.id}_s{c + 1}_est.wav"), estimate, rate,
                        overwrite=True)


def _atomic_write(path: PathLike, text: str) -> None:
    path = as_path(path)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def write_csv(path: PathLike, records: Sequence[dict]) -> None:
    """One row per utterance: id, length, the metrics present, permutation."""
    columns = ["id", "length"] + [m for m in METRIC_COLUMNS if records and m in records[0]]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns + ["permutation"])
    for record in records:
        writer.writerow([record[c] for c in columns]
                        + [" ".join(str(p) for p in record["permutation"])])
    _atomic_write(path, buffer.getvalue())


def _versions() -> dict:
    import flax
    import jaxlib
    import scipy
    import soundfile

    return {"galr_jax": galr_jax.__version__, "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__,
            "soundfile": soundfile.__version__}


def format_table(summary: dict) -> str:
    """Mean and median of every metric of a summary, one line each."""
    lines = [f"{'metric':<10}{'mean':>10}{'median':>10}"]
    for name in METRIC_COLUMNS:
        if name in summary:
            lines.append(f"{name:<10}{summary[name]:>10.2f}{summary[f'{name}_median']:>10.2f}")
    lines.append(f"{'count':<10}{summary['count']:>10d}")
    return "\n".join(lines)


def evaluate_checkpoint(config: Config, variables: Any, meta: dict, split: str, out_dir: str, *,
                        cache_dir: str, compute_sdr: bool = True, perceptual: bool = True,
                        save_audio: int = 0, max_utterances: Optional[int] = None,
                        checkpoint: str = "", progress: bool = True) -> dict:
    """Scores ``variables`` on ``split`` and writes the CSV, the JSON and examples.

    Args:
      config: evaluation config (model fitting the variables; data and eval sections).
      variables: Flax variables.
      meta: checkpoint meta (``step``, ``metrics``).
      split: split name (a folder for wsj0-mix, a CSV for LibriMix).
      out_dir: where the outputs go (created).
      cache_dir: where the split's length index is cached.
      compute_sdr: BSS-eval SDR/SDRi.
      perceptual: PESQ/STOI where installed.
      save_audio: number of utterances whose audio is saved.
      max_utterances: score only the first N utterances.
      checkpoint: path recorded in the summary.
      progress: show a progress bar.

    Returns:
      The summary dict (also written to ``summary.json``).
    """
    start = time.perf_counter()
    data = config.data
    dataset = open_split(data, split, config.model.num_sources, cache_dir)
    apply = BatchedApply(config, variables)
    perceptual_names = metrics.available_perceptual_metrics() if perceptual else ()
    examples: list = []
    with UtteranceReader(dataset, num_workers=data.num_workers, prefetch=data.prefetch,
                         bad_files=data.bad_files, limit=max_utterances) as reader:
        result = scoring.evaluate(
            apply, _remember_first(reader, save_audio, examples), sample_rate=data.sample_rate,
            bucket_seconds=config.eval.bucket_seconds, batch_size=config.eval.batch_size,
            num_devices=apply.num_devices, compute_sdr=compute_sdr,
            perceptual=bool(perceptual_names), progress=progress)
        skipped = list(dataset.problems) + list(reader.problems)
    if not result.records:
        raise DatasetError(f"{dataset.name}: no utterance could be read; {len(skipped)} bad "
                           f"file(s), first: {skipped[0] if skipped else 'none'}")
    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / CSV_NAME, result.records)
    if examples:
        save_examples(apply, examples, {r["id"]: r for r in result.records}, config, out_dir)
    summary = {name[:-len("_mean")]: value for name, value in result.summary.items()
               if name.endswith("_mean")}
    summary.update({k: v for k, v in result.summary.items() if not k.endswith("_mean")})
    summary.update({
        "step": int(meta.get("step", -1)),
        "split": split,
        "data_root": os.path.abspath(data.root),
        "checkpoint": checkpoint,
        "training_metrics": meta.get("metrics") or {},
        "skipped": len(skipped),
        "skipped_files": [{"file": f, "problem": p} for f, p in skipped],
        "sdr_method": SDR_METHOD if compute_sdr else None,
        "perceptual_metrics": list(perceptual_names),
        "compiled_shapes": sorted(list(shape) for shape in apply.shapes),
        "devices": [str(d) for d in apply.devices],
        "seconds": time.perf_counter() - start,
        "versions": _versions(),
        "config": config_to_dict(config),
    })
    _atomic_write(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``eval.py``; returns the exit status (2 for a usage, config or data error)."""
    args = _parse_args(argv)
    configure_logging(logging.ERROR)  # Orbax's read-only notices
    try:
        config, variables, meta = load_for_eval(args)
        split = args.split or config.data.test_split
        out_dir = as_path(args.out or as_path(args.workdir) / EVAL_SUBDIR / split)
        cache_root = as_path(args.workdir) if args.workdir else out_dir
        save_audio = config.eval.save_audio_examples if args.save_audio is None else args.save_audio
        summary = evaluate_checkpoint(
            config, variables, meta, split, out_dir,
            # The length index stats local audio; its cache stays local (none for a URL).
            cache_dir=None if is_remote(cache_root) else str(cache_root / INDEX_SUBDIR),
            compute_sdr=not args.no_sdr, perceptual=not args.no_perceptual,
            save_audio=save_audio, max_utterances=args.max_utterances,
            checkpoint=(f"{PRETRAINED_PREFIX}{args.model}" if args.model
                        else str(as_path(args.workdir or args.checkpoint))),
            progress=not args.quiet)
    except (CheckpointError, ConfigError, DatasetError, AudioError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{split}: step {summary['step']}, {summary['count']} utterances"
          + (f", {summary['skipped']} skipped (bad files)" if summary["skipped"] else ""))
    print(format_table(summary))
    print(f"wrote {out_dir / CSV_NAME} and {SUMMARY_NAME}")
    return 0
