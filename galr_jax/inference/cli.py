"""Separate recordings with a trained model: one WAV per source for each input.

Usage::

    python -m galr_jax.inference.cli --workdir runs/demo mix1.wav recordings/ "calls/*.flac" \
        --out separated/
    galr-separate --workdir runs/demo long_meeting.wav --out separated/ --pcm16
    galr-separate --exported galr.jaxexport mix1.wav --out separated/   # see galr-export
    galr-separate --model galr_voices_8k mix1.wav --out separated/     # shipped with galr-jax
    galr-separate --list-models                                         # their names

For every input ``NAME.ext`` it writes ``OUT/NAME_s1.wav``, ``OUT/NAME_s2.wav``, ...
Inputs are files, directories (searched recursively for audio files; symlinked folders
are not followed) or glob patterns. Inputs at another sample rate are resampled with
soxr, multi-channel inputs are averaged to mono; both with a warning. Files of any
length stream through the model in overlapping chunks, in bounded memory.

Outputs are 32-bit float WAV by default (the model's output unchanged, values above 1
kept), or with ``--pcm16`` 16-bit PCM scaled by one gain per input so the loudest
source peaks at -1 dBFS (never clipped). Existing outputs are never replaced without
``--force``. A bad input (unreadable, empty, not audio, NaN samples, shorter than one
encoder window, ...) is reported and skipped; the run goes on and ends with a summary
and exit status 1 if anything failed (2 for a usage or checkpoint error).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
import warnings
from typing import Iterable, Optional, Sequence

import soundfile as sf
import tqdm

from galr_jax import pretrained
from galr_jax.cli_logging import configure_logging
from galr_jax.config import COMPUTE_DTYPE_NAMES, config_from_saved
from galr_jax.data.audio import AudioError
from galr_jax.inference.separator import SeparationError, Separator
from galr_jax.training.checkpoints import CheckpointError, parse_which

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff", ".mp3")
EXIT_FAILED_FILES = 1
EXIT_USAGE = 2
# Files at least this many chunks long get their own progress bar.
_LONG_FILE_CHUNKS = 4


def output_paths(input_path: str, out_dir: str, num_sources: int) -> list[str]:
    """``OUT/<stem>_s1.wav ... OUT/<stem>_sC.wav`` for one input file."""
    stem = os.path.splitext(os.path.basename(input_path))[0]
    return [os.path.join(out_dir, f"{stem}_s{c + 1}.wav") for c in range(num_sources)]


def _audio_files_under(folder: str) -> list[str]:
    found = []
    # followlinks=False: a symlink loop between folders cannot recurse forever.
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files)
                  if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)]
    return found


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Turns command-line inputs into a list of files.

    Args:
      inputs: files, directories or glob patterns.

    Returns:
      ``(files, problems)``: files in the order given (each once), and
      ``(input, problem)`` for inputs that name nothing usable (a missing path, a
      pattern with no match, a directory without audio files).
    """
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            found = _audio_files_under(item)
            if not found:
                problems.append((item, f"directory holds no audio files "
                                       f"({', '.join(AUDIO_EXTENSIONS)})"))
        elif os.path.lexists(item):
            found = [item]  # even a broken link: opening it reports the exact problem
        elif glob.has_magic(item):
            found = [p for p in sorted(glob.glob(item, recursive=True)) if not os.path.isdir(p)]
            if not found:
                problems.append((item, "no file matches this pattern"))
        else:
            problems.append((item, "no such file or directory"))
            found = []
        files += found
    unique = list(dict.fromkeys(os.path.normpath(f) for f in files))
    return unique, problems


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="galr-separate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="audio files, directories or glob patterns")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workdir", help="training workdir or checkpoint directory with the weights")
    source.add_argument("--model", metavar="NAME",
                        help="a pretrained model shipped with galr-jax (see --list-models)")
    source.add_argument("--exported", metavar="FILE",
                        help="a galr-export file instead (runs without the model code)")
    source.add_argument("--list-models", action="store_true",
                        help="print the names of the pretrained models, one a line, and exit")
    parser.add_argument("--out", help="output directory (created if missing)")
    parser.add_argument("--which", default="best",
                        help="checkpoint: best (default), latest or a step number")
    parser.add_argument("--pcm16", action="store_true",
                        help="write peak-normalised 16-bit PCM instead of 32-bit float")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument("--chunk-seconds", type=float, default=None,
                        help="long-audio chunk length (default: the config's eval.chunk_seconds)")
    parser.add_argument("--overlap-seconds", type=float, default=None,
                        help="overlap of neighbouring chunks (default: eval.chunk_overlap_seconds)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="chunks per forward pass (default: eval.chunk_batch_size)")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPE_NAMES, default=None,
                        help="dtype of the matrix products (default: the checkpoint's "
                             "runtime.compute_dtype); bfloat16 is faster on CPUs and "
                             "accelerators with bf16 units")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--stream", action="store_true",
                        help="run a causal model as a live stream over each input (a file, "
                             "or - for raw 16-bit PCM on standard input) and report latency "
                             "and real-time factor (galr_jax/inference/stream_cli.py)")
    parser.add_argument("--block-ms", type=float, default=20.0,
                        help="--stream: milliseconds of input read per block (default 20)")
    args = parser.parse_args(argv)
    if not args.list_models:
        if not (args.workdir or args.model or args.exported):
            parser.error("one of --workdir, --model, --exported or --list-models is required")
        if not args.inputs or not args.out:
            parser.error("give the INPUT files and --out")
    return args



def _report(message: str) -> None:
    tqdm.tqdm.write(message, file=sys.stderr)


def _duration(path: str) -> float:
    """Seconds of audio per the header; 0 when unreadable (separation reports why)."""
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0.0


def _separate_one(separator: Separator, path: str, destinations: list[str], args) -> dict:
    chunk_seconds = separator.chunk_samples / separator.sample_rate
    bar = None
    try:
        duration = 0.0 if args.quiet else _duration(path)
        if duration > _LONG_FILE_CHUNKS * chunk_seconds:
            bar = tqdm.tqdm(total=round(duration), unit="s", leave=False,
                            desc=os.path.basename(path), file=sys.stderr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = separator.separate_to_files(
                path, destinations, "pcm16" if args.pcm16 else "float", overwrite=args.force,
                progress=(lambda n: bar.update(n / separator.sample_rate)) if bar else None)
        for warning in caught:
            _report(f"warning: {warning.message}")
        return result
    finally:
        if bar:
            bar.close()


def _exported_separator(args) -> Separator:
    from galr_jax.inference.exported import load

    if args.compute_dtype:
        raise ValueError("--compute-dtype: an exported model's dtype was fixed by galr-export")
    model = load(args.exported)
    separator = Separator(config_from_saved(model.config, args.exported), None,
                          chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                          batch_size=args.batch_size, apply=model)
    if model.max_samples is not None and separator.chunk_samples > model.max_samples:
        raise ValueError(f"{args.exported}: chunks of {separator.chunk_samples} samples are "
                         f"longer than its longest exported length ({model.max_samples})")
    return separator


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = _parse_args(argv)
    if args.list_models:
        for name in pretrained.list_models():
            print(name)
        return 0
    configure_logging(logging.ERROR)  # Orbax's read-only notices
    if args.stream:
        from galr_jax.inference.stream_cli import stream_files
        return stream_files(args, output_paths)
    files, problems = expand_inputs(args.inputs)
    failures = [f"{item}: {problem}" for item, problem in problems]
    try:
        options = dict(chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                       batch_size=args.batch_size, compute_dtype=args.compute_dtype)
        if args.exported:
            separator = _exported_separator(args)
        elif args.model:
            separator = Separator.from_pretrained(args.model, **options)
        else:
            separator = Separator.from_checkpoint(args.workdir, parse_which(args.which), **options)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(args.out, exist_ok=True)
    claimed: dict[str, str] = {}  # output path -> the input that writes it in this run
    done, seconds, start = 0, 0.0, time.perf_counter()
    for path in tqdm.tqdm(files, desc="separate", unit="file", disable=args.quiet, file=sys.stderr):
        destinations = output_paths(path, args.out, separator.num_sources)
        clash = next((claimed[d] for d in destinations if d in claimed), None)
        if clash:
            failures.append(f"{path}: same file name as {clash}; both would write "
                            f"{os.path.basename(destinations[0])}")
            _report(f"FAILED {failures[-1]}")
            continue
        claimed.update({d: path for d in destinations})
        try:
            result = _separate_one(separator, path, destinations, args)
        except (AudioError, SeparationError, OSError, sf.LibsndfileError) as e:
            # Most errors already start with the input's path; others name an output.
            failures.append(str(e) if str(e).startswith(path) else f"{path}: {e}")
            _report(f"FAILED {failures[-1]}")
            continue
        done += 1
        seconds += result["seconds"]
        if args.pcm16 and result["gain"] != 1.0:
            _report(f"{path}: scaled by {result['gain']:.3g} for 16-bit output")
    elapsed = time.perf_counter() - start
    print(f"separated {done} file(s), {seconds:.1f} s of audio in {elapsed:.1f} s -> {args.out}; "
          f"{len(failures)} failed", file=sys.stderr)
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return EXIT_FAILED_FILES if failures else 0


if __name__ == "__main__":
    sys.exit(main())
