"""Command line for moving weights between the PyTorch reference and Orbax checkpoints.

    python -m galr_jax.interop.cli torch-to-orbax model.pt --config configs/galr_1.5m.yaml \
        --out exported/
    python -m galr_jax.interop.cli orbax-to-torch runs/galr_1.5m --out galr.pt
    python -m galr_jax.interop.cli compare --workdir exported/ --torch model.pt --wav mixture.wav

``torch-to-orbax`` writes a weights-only checkpoint directory that ``eval.py
--checkpoint`` and ``galr_jax.inference.cli --workdir`` read. ``orbax-to-torch`` writes a
``state_dict`` for :func:`galr_jax.interop.torch_reference.build_torch_model` and the config
beside it (``galr.yaml``). ``compare`` runs both frameworks on one file and reports,
per source, the largest absolute difference and the SI-SNR of the PyTorch output
against the JAX one.

PyTorch files are read with ``torch.load(weights_only=True)`` only: a file that holds
anything but tensors and plain containers (a pickle that would run code) is refused.
A state_dict that does not fit the config fails with the first bad key named.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np
import torch

from galr_jax.cli_logging import configure_logging
from galr_jax.config import ConfigError, add_override_argument, load_config, save_config
from galr_jax.data.audio import AudioError, read_audio
from galr_jax.interop.convert import ConversionError, flax_to_torch, torch_to_flax
from galr_jax.interop.torch_reference import build_torch_model
from galr_jax.models import build_model
from galr_jax.training import losses
from galr_jax.training.checkpoints import (CheckpointError, parse_which, restore_variables,
                                           save_variables)

EXIT_ERROR = 2
EXIT_TOO_DIFFERENT = 1
# Key some training scripts wrap their state_dict in.
_WRAPPED_STATE_DICT_KEY = "state_dict"
# torch's weights_only unpickler: where its message names the problem, and the problem
# of a pickle that refers to a function or class (what a code-running pickle needs).
_UNPICKLER_MARKER = "WeightsUnpickler error:"
_UNSAFE_GLOBAL = "Unsupported global"


def load_torch_state_dict(path: str) -> "dict[str, torch.Tensor]":
    """Reads a ``.pt`` state_dict with ``weights_only=True``.

    A ``{"state_dict": {...}}`` wrapper is unwrapped.

    Raises:
      ConversionError: unreadable file, a pickle with code or other objects in it
        (refused, never executed), or a value that is not a tensor.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if _UNSAFE_GLOBAL in reason:
            raise ConversionError(f"{path}: refused: it names Python code to run, not only "
                                  f"tensors ({reason}); torch.load(weights_only=True) never runs "
                                  "it") from None
        raise ConversionError(f"{path}: not a readable PyTorch file ({reason})") from None
    except Exception as e:  # a corrupt zip archive, an empty or cut-off file
        raise ConversionError(f"{path}: not a readable PyTorch file ({type(e).__name__}: "
                              f"{_first_sentence(str(e))})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get(_WRAPPED_STATE_DICT_KEY), Mapping):
        loaded = loaded[_WRAPPED_STATE_DICT_KEY]
    if not isinstance(loaded, Mapping):
        raise ConversionError(f"{path}: expected a state_dict (a mapping of tensors), got "
                              f"{type(loaded).__name__}")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: {key}: expected a tensor, got {type(value).__name__}")
    return dict(loaded)


def _first_sentence(text: str) -> str:
    return " ".join(text.split()).split(". ")[0]


def _unpickler_reason(error: Exception) -> str:
    """The part of torch's long weights_only message that says what was wrong."""
    text = str(error)
    if _UNPICKLER_MARKER in text:
        text = text.split(_UNPICKLER_MARKER, 1)[1]
    paragraphs = [p for p in text.split("\n\n") if p.strip()] or [type(error).__name__]
    return _first_sentence(paragraphs[0])


def _refuse_existing(path: str, force: bool) -> None:
    if os.path.lexists(path) and not force:
        raise ConversionError(f"{path}: already exists; not overwriting it (use --force)")


def torch_to_orbax(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    variables = torch_to_flax(load_torch_state_dict(args.input), config)
    path = save_variables(args.out, variables, config, step=args.step)
    print(f"wrote {path} (use it as --workdir {args.out} or --checkpoint {args.out})")
    return 0


def _atomic_torch_save(state_dict: Mapping[str, Any], path: str, force: bool) -> None:
    tmp = f"{path}.tmp"
    torch.save(state_dict, tmp)
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # create-if-absent, so a file that appeared meanwhile survives
    finally:
        os.unlink(tmp)


def orbax_to_torch(args: argparse.Namespace) -> int:
    config_path = os.path.splitext(args.out)[0] + ".yaml"
    _refuse_existing(args.out, args.force)
    _refuse_existing(config_path, args.force)
    variables, meta = restore_variables(args.checkpoint, which=parse_which(args.which))
    state_dict = flax_to_torch(variables, meta["config"])
    _atomic_torch_save(state_dict, args.out, args.force)
    save_config(meta["config"], config_path)
    print(f"wrote {args.out} (step {meta['step']}) and its config {config_path}")
    return 0


def compare_outputs(jax_output: np.ndarray, torch_output: np.ndarray) -> dict:
    """Per-source max abs difference and SI-SNR (dB) of torch against JAX, ``[C, T]`` each."""
    difference = np.abs(jax_output - torch_output).max(axis=-1)
    si_snr = np.asarray(losses.si_snr(jnp.asarray(torch_output), jnp.asarray(jax_output)))
    return {"max_abs_difference": float(difference.max()),
            "min_si_snr_db": float(si_snr.min()),
            "output_peak": float(np.abs(jax_output).max()),
            "per_source": [{"source": c + 1, "max_abs_difference": float(d), "si_snr_db": float(s)}
                           for c, (d, s) in enumerate(zip(difference, si_snr))]}


def compare(args: argparse.Namespace) -> int:
    variables, meta = restore_variables(args.workdir, which=parse_which(args.which))
    config = meta["config"]
    state_dict = load_torch_state_dict(args.torch)
    torch_to_flax(state_dict, config)  # fit check: names the first bad key
    mixture = read_audio(args.wav, config.model.sample_rate, stereo="downmix")
    if args.seconds:
        mixture = mixture[:int(args.seconds * config.model.sample_rate)]
    jax_output = np.asarray(build_model(config).apply(variables, jnp.asarray(mixture[None])))[0]
    torch_model = build_torch_model(config)
    torch_model.load_state_dict(state_dict)
    torch_model.eval()
    with torch.no_grad():
        torch_output = torch_model(torch.from_numpy(mixture[None])).numpy()[0]
    report = compare_outputs(jax_output, torch_output)
    report.update(wav=os.path.abspath(args.wav), samples=int(mixture.shape[0]), step=meta["step"])
    for source in report["per_source"]:
        print(f"s{source['source']}: max |jax - torch| = {source['max_abs_difference']:.3g}, "
              f"SI-SNR(torch vs jax) = {source['si_snr_db']:.1f} dB")
    print(f"max abs difference {report['max_abs_difference']:.3g} "
          f"(output peak {report['output_peak']:.3g}), min SI-SNR {report['min_si_snr_db']:.1f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.max_difference is not None and report["max_abs_difference"] > args.max_difference:
        print(f"FAILED: difference above --max-difference {args.max_difference}", file=sys.stderr)
        return EXIT_TOO_DIFFERENT
    return 0



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m galr_jax.interop.cli",
                                     description="Move weights between PyTorch and Orbax.")
    commands = parser.add_subparsers(dest="command", required=True)
    to_orbax = commands.add_parser("torch-to-orbax", help="PyTorch state_dict -> Orbax checkpoint")
    to_orbax.add_argument("input", metavar="IN.pt")
    to_orbax.add_argument("--config", required=True, help="config file the weights belong to")
    add_override_argument(to_orbax, dest="set")
    to_orbax.add_argument("--out", required=True, help="checkpoint directory to write")
    to_orbax.add_argument("--step", type=int, default=0, help="step number to record (default 0)")
    to_orbax.set_defaults(run=torch_to_orbax)
    to_torch = commands.add_parser("orbax-to-torch", help="Orbax checkpoint -> PyTorch state_dict")
    to_torch.add_argument("checkpoint", metavar="WORKDIR_OR_CHECKPOINT")
    to_torch.add_argument("--which", default="best", help="best (default), latest or a step")
    to_torch.add_argument("--out", required=True, metavar="OUT.pt")
    to_torch.add_argument("--force", action="store_true", help="replace OUT.pt and OUT.yaml")
    to_torch.set_defaults(run=orbax_to_torch)
    check = commands.add_parser("compare", help="run both frameworks on one wav and compare")
    check.add_argument("--workdir", required=True,
                       help="workdir or checkpoint directory (JAX side)")
    check.add_argument("--which", default="best", help="best (default), latest or a step")
    check.add_argument("--torch", required=True, metavar="OUT.pt", help="state_dict (PyTorch side)")
    check.add_argument("--wav", required=True, help="mono mixture at the model's sample rate")
    check.add_argument("--seconds", type=float, default=None, help="use only the first S seconds")
    check.add_argument("--json", default=None, metavar="FILE", help="also write the report here")
    check.add_argument("--max-difference", type=float, default=None,
                       help="exit with status 1 if the max abs difference is above this")
    check.set_defaults(run=compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (2 on any error, with a one-line message)."""
    args = _parser().parse_args(argv)
    configure_logging(logging.ERROR)  # Orbax's read-only notices
    try:
        return args.run(args)
    except (ConversionError, CheckpointError, ConfigError, AudioError, FileNotFoundError,
            FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
