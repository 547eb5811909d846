"""Runs a separator exported by ``galr-export`` with JAX alone: no Flax, no galr_jax model code.

Example::

    from galr_jax.inference import exported   # or: from galr_jax import exported
    model = exported.load("model.jaxexport")
    estimates = model(mixture)               # [B, T] float32 -> [B, C, T] float32
    estimates = model(padded, lengths=n)     # rows padded to T, n[b] valid samples each

The file is a zip (``numpy.savez``) of:

* ``meta``: UTF-8 JSON: the format name and version, the run config (as saved with
  checkpoints), the platforms, and one entry per exported function saying which input
  lengths it takes: ``{"multiple": Q}`` (any multiple of Q samples: the length is
  symbolic) or ``{"length": T}`` (exactly T samples); the batch is symbolic in both;
* ``function_I``: the bytes of ``jax.export.Exported.serialize()`` of function I,
  ``(weights, mixture [B, T], lengths [B]) -> estimates [B, C, T]``;
* ``weight_J``: the model's parameters as a flat list (the order of ``jax.tree.leaves``),
  passed as arguments rather than baked in, so functions for several lengths share one copy.

A call pads the mixture with zeros to the smallest length a function takes and passes
each row's length: the model leaves padding out of its computation (spec, "Batches with
padding"), so the result equals the model at the exact length, up to float32 rounding.
This module must stay importable without Flax and without ``galr_jax.models``
(``tests/test_export.py`` checks it in a fresh process).
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np

FORMAT = "galr-jax-exported"
FORMAT_VERSION = 1
META = "meta"
FUNCTION = "function_{}"
WEIGHT = "weight_{}"

PathLike = Union[str, os.PathLike]


class ExportedModelError(ValueError):
    """An exported-model file that cannot be used; the message names the file."""


def _text(array: np.ndarray) -> str:
    return array.tobytes().decode("utf-8")


class ExportedModel:
    """A separator loaded from a ``galr-export`` file; see the module docstring.

    It has the interface of :class:`galr_jax.inference.apply.BatchedApply` (a call on
    ``[B, T]`` with optional lengths, ``num_devices``, ``shapes``), so
    :class:`galr_jax.inference.Separator` can run it over recordings of any length.

    Attributes:
      path: the file.
      config: the run config as a plain mapping (``config["model"]["window"]``, ...).
      sample_rate: Hz the model expects.
      num_sources: C.
      platforms: platforms the functions were lowered for.
      functions: ``[{"multiple": Q} or {"length": T}, ...]`` the lengths each takes.
      max_samples: the longest input a call takes (None: unbounded).
      num_devices: 1: a call runs on JAX's default device.
      shapes: padded input shapes called so far (each compiles once).
    """

    num_devices = 1

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                entries = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ExportedModelError(f"{self.path}: not a galr-export file ({e})") from None
        meta = self._meta(entries)
        self.config: dict = meta["config"]
        self.sample_rate = int(self.config["model"]["sample_rate"])
        self.num_sources = int(self.config["model"]["num_sources"])
        self.platforms: list[str] = meta["platforms"]
        self.functions: list[dict] = meta["functions"]
        platform = jax.default_backend()
        if platform not in self.platforms:
            raise ExportedModelError(f"{self.path}: exported for {', '.join(self.platforms)}; "
                                     f"this JAX runs on {platform}")
        try:
            exported = [jax.export.deserialize(bytearray(entries[FUNCTION.format(i)]))
                        for i in range(len(self.functions))]
            weights = [entries[WEIGHT.format(i)] for i in range(meta["num_weights"])]
        except KeyError as e:
            raise ExportedModelError(f"{self.path}: missing entry {e}") from None
        self._weights = jax.device_put(weights)
        # One jit per function: each compiles once per (batch, padded length).
        self._calls = [jax.jit(e.call) for e in exported]
        fixed = [f["length"] for f in self.functions if "length" in f]
        symbolic = any("multiple" in f for f in self.functions)
        self.max_samples: Optional[int] = None if symbolic else max(fixed)
        self.shapes: set[tuple[int, int]] = set()

    def _meta(self, entries: dict) -> dict:
        if META not in entries:
            raise ExportedModelError(f"{self.path}: no '{META}' entry; not a galr-export file")
        meta = json.loads(_text(entries[META]))
        if meta.get("format") != FORMAT:
            raise ExportedModelError(f"{self.path}: format {meta.get('format')!r}, "
                                     f"expected {FORMAT!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise ExportedModelError(
                f"{self.path}: format version {meta.get('version')}; this galr-jax reads "
                f"version {FORMAT_VERSION} (re-export the model with this version)")
        return meta

    def padded_length(self, length: int) -> tuple[int, int]:
        """``(function index, padded length)`` of the function that takes ``length`` samples
        with the least padding.

        Raises:
          ValueError: ``length`` is longer than every function's fixed length.
        """
        candidates = []
        for index, function in enumerate(self.functions):
            if "multiple" in function:
                multiple = function["multiple"]
                candidates.append((-(-length // multiple) * multiple, index))
            elif function["length"] >= length:
                candidates.append((function["length"], index))
        if not candidates:
            raise ValueError(
                f"{self.path}: {length} samples is longer than the longest exported length "
                f"({self.max_samples}); separate long recordings in chunks "
                "(galr-separate --exported, or galr_jax.inference.Separator)")
        padded, index = min(candidates)
        return index, padded

    def __call__(self, mixture: np.ndarray, lengths: Optional[Sequence[int]] = None
                 ) -> np.ndarray:
        """Separates a batch.

        Args:
          mixture: ``[B, T]`` float32, any ``B >= 1`` and ``T >= 1``.
          lengths: ``[B]`` valid samples per row (zero padding after them is left
            out of the computation); default every row full length.

        Returns:
          ``[B, C, T]`` float32 numpy array; samples past a row's length are zero.
        """
        mixture = np.asarray(mixture, np.float32)
        if mixture.ndim != 2 or 0 in mixture.shape:
            raise ValueError(f"mixture must be [B, T] with B, T >= 1, got shape {mixture.shape}")
        batch, length = mixture.shape
        lengths = np.full((batch,), length, np.int32) if lengths is None else np.asarray(
            lengths, np.int32)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [B={batch}], got shape {lengths.shape}")
        index, padded = self.padded_length(length)
        inputs = np.zeros((batch, padded), np.float32)
        inputs[:, :length] = mixture
        self.shapes.add(inputs.shape)
        estimates = self._calls[index](self._weights, inputs, lengths)
        return np.asarray(estimates)[:, :, :length]


def load(path: PathLike) -> ExportedModel:
    """Loads a ``galr-export`` file for this machine's JAX platform.

    Raises:
      ExportedModelError: not such a file, another format version, or not exported
        for this platform; names the file.
    """
    return ExportedModel(path)


def write(path: PathLike, meta: dict, functions: Sequence[bytes], weights: Sequence[Any]) -> int:
    """Writes an exported-model file (used by ``galr-export``); returns its size in bytes."""
    if len(functions) != len(meta["functions"]):
        raise ValueError(f"{len(functions)} functions for {len(meta['functions'])} entries")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "num_weights": len(weights), **meta}
    entries = {META: np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
    entries.update({FUNCTION.format(i): np.frombuffer(f, np.uint8)
                    for i, f in enumerate(functions)})
    entries.update({WEIGHT.format(i): np.asarray(w) for i, w in enumerate(weights)})
    # A file object, because np.savez would append '.npz' to a path; uncompressed,
    # because float weights barely compress.
    with open(path, "wb") as f:
        np.savez(f, **entries)
    return os.path.getsize(path)
