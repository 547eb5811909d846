"""``galr-export``: a trained separator as one portable file that runs with JAX alone.

Usage::

    galr-export --workdir runs/galr_1.5m --out galr.jaxexport              # best checkpoint
    galr-export --workdir runs/demo --which latest --out demo.jaxexport --platforms cpu,cuda
    galr-export --model galr_voices_8k --out voices.jaxexport             # a shipped model
    galr-export --config configs/galr_1.5m.yaml --out random.jaxexport     # random weights, for tests

The file holds ``jax.export`` serializations of ``(weights, mixture [B, T], lengths [B])
-> estimates [B, C, T]`` lowered for every platform asked for (default cpu, cuda and
tpu: lowering needs no device), the weights, and the config; see
:mod:`galr_jax.inference.exported` for the format and the loader. The batch B is always symbolic.
The length T is, with ``--lengths``:

* ``symbolic``: any multiple of ``Q = window * segment_length / 2`` samples (800 =
  0.1 s for the shipped configs). At such lengths every framing and segmentation
  step pads by a fixed amount, so every shape is linear in T/Q; for a fully free T the
  segment count is a nest of floor divisions and remainders that ``jax.export`` cannot
  prove positive. The loader pads an input to the next multiple and passes its length,
  which the model leaves out, so any input length works.
* ``S1,S2,...`` (seconds): one function per fixed length; an input is padded to the
  smallest that holds it, and longer ones must be cut into chunks (``galr-separate``).
* ``auto`` (default): ``symbolic`` if the model traces with a symbolic length, else
  the config's ``eval.bucket_seconds`` and ``eval.chunk_seconds``, with a note on
  stderr saying which construct needs a concrete length.

Exit status 2 for a usage, config or checkpoint error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import export

from galr_jax import pretrained
from galr_jax.config import (Config, ConfigError, add_override_argument, config_from_dict,
                             config_to_dict, load_config, saved_config_dict)
from galr_jax.inference import exported
from galr_jax.models import build_model
from galr_jax.training.checkpoints import CheckpointError, parse_which, restore_variables

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # the names jax.export lowers for
LENGTHS_AUTO, LENGTHS_SYMBOLIC = "auto", "symbolic"
EXIT_USAGE = 2
# Errors that mean "this model needs a concrete input length", as opposed to a bug.
_NEEDS_CONCRETE_LENGTH = (jax.errors.ConcretizationTypeError,
                          jax.errors.TracerArrayConversionError,
                          jax.errors.InconclusiveDimensionOperation)
# Samples of the dummy mixture for a random initialisation; no parameter depends on it.
_INIT_SAMPLES = 256


class SymbolicLengthError(ValueError):
    """The model cannot be traced with a symbolic length; says where."""


def length_multiple(config: Config) -> int:
    """Q: at multiples of Q samples every padding of the model is a constant."""
    return config.model.window * config.model.segment_length // 2


def _separator(config: Config, treedef: Any):
    model = build_model(config)

    def separate(weights, mixture, lengths):
        return model.apply(jax.tree.unflatten(treedef, weights), mixture, lengths=lengths)

    return separate


def _origin(error: Exception) -> str:
    """The innermost galr_jax frame of a traceback, ``file:line (function)``."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "galr_jax" in f.filename]
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} ({frame.name}: {frame.line})"


def export_functions(config: Config, variables: Any, platforms: Sequence[str],
                     lengths: Sequence[int] | str) -> tuple[dict, list[bytes], list[Any]]:
    """Lowers the separator for ``platforms``.

    Args:
      config: the run config.
      variables: ``{'params': ...}`` matching ``config.model``.
      platforms: e.g. ``("cpu", "cuda", "tpu")``.
      lengths: ``"symbolic"`` or input lengths in samples (see the module docstring).

    Returns:
      ``(meta, serialized functions, flat weights)`` for :func:`galr_jax.inference.exported.write`.

    Raises:
      SymbolicLengthError: ``lengths="symbolic"`` and the model needs a concrete length.
    """
    weights, treedef = jax.tree.flatten(variables)
    weight_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
    exporter = export.export(jax.jit(_separator(config, treedef)), platforms=tuple(platforms))
    functions, entries = [], []
    if lengths == LENGTHS_SYMBOLIC:
        batch, steps = export.symbolic_shape("b, k")
        multiple = length_multiple(config)
        try:
            functions.append(exporter(weight_specs,
                                      jax.ShapeDtypeStruct((batch, multiple * steps), jnp.float32),
                                      jax.ShapeDtypeStruct((batch,), jnp.int32)))
        except _NEEDS_CONCRETE_LENGTH as e:
            raise SymbolicLengthError(
                f"the {config.model.separator} model needs a concrete input length: "
                f"{type(e).__name__} at {_origin(e)}") from e
        entries.append({"multiple": multiple})
    else:
        for length in sorted(set(lengths)):
            batch, = export.symbolic_shape("b")
            functions.append(exporter(weight_specs,
                                      jax.ShapeDtypeStruct((batch, length), jnp.float32),
                                      jax.ShapeDtypeStruct((batch,), jnp.int32)))
            entries.append({"length": length})
    meta = {"config": saved_config_dict(config), "platforms": list(platforms),
            "functions": entries, "jax_version": jax.__version__}
    return meta, [f.serialize() for f in functions], weights


def default_lengths(config: Config) -> list[int]:
    """The lengths Separator and evaluation run at: the eval buckets and the chunk."""
    seconds = {*config.eval.bucket_seconds, config.eval.chunk_seconds}
    return sorted({round(s * config.model.sample_rate) for s in seconds})


def export_model(config: Config, variables: Any, out: str,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 lengths: Sequence[float] | str = LENGTHS_AUTO) -> dict:
    """Writes ``out``; returns ``{'bytes', 'seconds', 'functions'}``.

    ``lengths``: ``"auto"``, ``"symbolic"`` or seconds (see the module docstring).
    """
    start = time.perf_counter()
    if lengths == LENGTHS_AUTO:
        try:
            meta, functions, weights = export_functions(config, variables, platforms,
                                                        LENGTHS_SYMBOLIC)
        except SymbolicLengthError as e:
            fixed = default_lengths(config)
            print(f"note: {e}; exporting the fixed lengths {fixed} (samples) instead",
                  file=sys.stderr)
            meta, functions, weights = export_functions(config, variables, platforms, fixed)
    elif lengths == LENGTHS_SYMBOLIC:
        meta, functions, weights = export_functions(config, variables, platforms, lengths)
    else:
        samples = [round(s * config.model.sample_rate) for s in lengths]
        meta, functions, weights = export_functions(config, variables, platforms, samples)
    size = exported.write(out, meta, functions, weights)
    return {"bytes": size, "seconds": time.perf_counter() - start, "functions": meta["functions"]}


def _parse_lengths(text: str) -> Sequence[float] | str:
    if text in (LENGTHS_AUTO, LENGTHS_SYMBOLIC):
        return text
    try:
        seconds = [float(s) for s in text.split(",")]
    except ValueError:
        seconds = []
    if not seconds or min(seconds) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected auto, symbolic or positive seconds such as 2,4,8")
    return seconds


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="galr-export", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir or checkpoint directory")
    source.add_argument("--model", metavar="NAME",
                        help="a pretrained model shipped with galr-jax (galr-separate --list-models)")
    source.add_argument("--config", help="YAML config: export randomly initialised weights")
    parser.add_argument("--which", default="best",
                        help="with --workdir: best (default), latest or a step number")
    parser.add_argument("--seed", type=int, default=0, help="with --config: initialisation seed")
    add_override_argument(parser)
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.jaxexport")
    parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                        help="comma-separated JAX platforms (default: %(default)s)")
    parser.add_argument("--lengths", type=_parse_lengths, default=LENGTHS_AUTO,
                        help="auto (default), symbolic, or seconds such as 2,4,8")
    return parser.parse_args(argv)


def _load(args: argparse.Namespace) -> tuple[Config, Any]:
    if args.config:
        config = load_config(args.config, args.overrides)
        sample = jnp.zeros((1, _INIT_SAMPLES), jnp.float32)
        return config, jax.jit(build_model(config).init)(jax.random.PRNGKey(args.seed), sample)
    if args.model:
        model = pretrained.load(args.model)
        saved, variables = model.config, model.variables
    else:
        variables, meta = restore_variables(args.workdir, which=parse_which(args.which))
        saved = meta["config"]
    config = config_from_dict(config_to_dict(saved), args.overrides)
    if config.model != saved.model:
        raise ConfigError("--set with --workdir or --model may change runtime settings only; "
                          "the architecture (model.*) is the checkpoint's")
    return config, variables


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = _parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only notices
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    unknown = sorted(set(platforms) - set(PLATFORMS)) or ([] if platforms else ["(none)"])
    if unknown:
        print(f"error: --platforms: {', '.join(unknown)} not one of {', '.join(PLATFORMS)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        config, variables = _load(args)
        result = export_model(config, variables, args.out, platforms, args.lengths)
    except (CheckpointError, ConfigError, SymbolicLengthError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    lengths = ", ".join(f"any multiple of {f['multiple']}" if "multiple" in f
                        else str(f["length"]) for f in result["functions"])
    print(f"wrote {args.out}: {result['bytes'] / 2**20:.1f} MiB, {config.model.separator} for "
          f"{', '.join(platforms)}, batch: any, length (samples): {lengths}; "
          f"{result['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
