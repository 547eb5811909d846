"""Pretrained models shipped with the package: a registry of named folders.

Each model is a folder ``<root>/<name>/`` written by :mod:`galr_jax.pretrained.release`:

* ``config.yaml``     -- the architecture (``model``), ``data.sample_rate`` and the
                         ``eval`` section (chunk geometry for long recordings);
* ``params.msgpack``  -- the Flax variables ``{'params': ...}`` alone
                         (:func:`flax.serialization.msgpack_serialize`);
* ``manifest.json``   -- name, sample rate, speakers, the sha256 of ``params.msgpack``,
                         the recipe, the training steps and the test figures;
* ``card.md``         -- the model card: data and licences, recipe, figures, limits.

The root is this package's folder, or the directory named by the environment
variable :data:`ROOT_ENV` (``GALR_PRETRAINED_DIR``), or a ``root`` argument: a
user's or a test's own models never need to be written into the installed package.

Usage::

    from galr_jax.inference import Separator
    separator = Separator.from_pretrained("galr_voices_8k")

    galr-separate --list-models
    galr-separate --model galr_voices_8k in.wav --out separated/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional

from galr_jax.training.checkpoints import CheckpointError

ROOT_ENV = "GALR_PRETRAINED_DIR"
CONFIG_FILE = "config.yaml"
PARAMS_FILE = "params.msgpack"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "card.md"
MODEL_FILES = (CONFIG_FILE, PARAMS_FILE, MANIFEST_FILE, CARD_FILE)
# Bumped when the folder's layout changes; a newer folder is refused, not misread.
FORMAT_VERSION = 1
# Names become folder and package-data paths: lower case, no separators or dots first.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")

PathLike = str | os.PathLike


class PretrainedError(CheckpointError):
    """A pretrained model is unknown or its files are unusable; names the model or file.

    A :class:`~galr_jax.training.checkpoints.CheckpointError`, so every command that reports a
    bad checkpoint reports this the same way.
    """


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded pretrained model.

    Attributes:
      name: its registry name.
      path: its folder.
      config: the :class:`galr_jax.config.Config` it runs with (data/train defaults).
      variables: Flax variables ``{'params': ...}``, numpy arrays.
      manifest: the parsed ``manifest.json``.
    """

    name: str
    path: str
    config: Any
    variables: Any
    manifest: dict


def registry_root(root: Optional[PathLike] = None) -> str:
    """The registry directory: ``root``, else ``$GALR_PRETRAINED_DIR``, else this package."""
    if root is not None:
        return os.fspath(root)
    return os.environ.get(ROOT_ENV) or os.path.dirname(os.path.abspath(__file__))


def check_name(name: str) -> str:
    """Returns ``name`` if it can be a model's name, else raises :class:`PretrainedError`."""
    if not NAME_PATTERN.fullmatch(name):
        raise PretrainedError(f"{name!r}: a model name is lower-case letters, digits, '_', "
                              "'.' and '-', starting with a letter or digit")
    return name


def list_models(root: Optional[PathLike] = None) -> list[str]:
    """Names of the models in the registry, sorted.

    A folder counts once its manifest is in place; the temporary folder of a release
    in progress (or one that crashed) starts with a dot and is never listed.
    """
    folder = registry_root(root)
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if NAME_PATTERN.fullmatch(name)
                  and os.path.isfile(os.path.join(folder, name, MANIFEST_FILE)))


def model_path(name: str, root: Optional[PathLike] = None) -> str:
    """The folder of model ``name``.

    Raises:
      PretrainedError: no such model; the message lists the available ones.
    """
    folder = registry_root(root)
    available = list_models(folder)
    if name not in available:
        listed = ", ".join(available) if available else "none"
        raise PretrainedError(f"unknown pretrained model {name!r} in {folder}; available: "
                              f"{listed} (galr-separate --list-models)")
    return os.path.join(folder, name)


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(name: str, root: Optional[PathLike] = None) -> dict:
    """The parsed ``manifest.json`` of model ``name``, checked for the fields loading needs."""
    path = os.path.join(model_path(name, root), MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: unreadable manifest ({e})") from e
    missing = [k for k in ("name", "format_version", "params_sha256") if k not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise PretrainedError(f"{path}: not a pretrained-model manifest (missing {missing})")
    if manifest["format_version"] > FORMAT_VERSION:
        raise PretrainedError(f"{path}: format {manifest['format_version']} is newer than this "
                              f"galr-jax reads ({FORMAT_VERSION}); upgrade galr-jax")
    return manifest


def _restore_params(path: str, data: bytes, config: Any) -> Any:
    """The variables in ``data``, checked leaf by leaf against ``config``'s model."""
    import jax
    import numpy as np
    from flax import serialization

    from galr_jax.training.checkpoints import abstract_variables

    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types for damaged bytes
        raise PretrainedError(f"{path}: not a Flax msgpack file ({type(e).__name__}: {e})") from e
    expected = {jax.tree_util.keystr(k): v for k, v in
                jax.tree_util.tree_flatten_with_path(abstract_variables(config))[0]}
    found = {jax.tree_util.keystr(k): v for k, v in
             jax.tree_util.tree_flatten_with_path(state)[0]}
    for key in sorted(set(expected) | set(found)):
        if key not in found or key not in expected:
            raise PretrainedError(f"{path}: parameter {key} is "
                                  f"{'missing' if key not in found else 'not in the model'} "
                                  "(config.yaml and params.msgpack do not match)")
        want, got = expected[key], np.asarray(found[key])
        if tuple(want.shape) != got.shape or np.dtype(want.dtype) != got.dtype:
            raise PretrainedError(f"{path}: parameter {key} is {got.dtype}{list(got.shape)}, the "
                                  f"model needs {np.dtype(want.dtype)}{list(want.shape)}")
    return state


def load(name: str, root: Optional[PathLike] = None) -> Pretrained:
    """Loads model ``name``: its config and its parameters, verified against the manifest.

    Raises:
      PretrainedError: unknown name (lists the available ones), a file missing, a
        ``params.msgpack`` whose sha256 differs from the manifest's (damaged or
        replaced), or parameters that do not fit the config; names the file.
    """
    import yaml

    from galr_jax.config import ConfigError, config_from_saved

    check_name(name)
    manifest = read_manifest(name, root)
    folder = model_path(name, root)
    config_path = os.path.join(folder, CONFIG_FILE)
    params_path = os.path.join(folder, PARAMS_FILE)
    for path in (config_path, params_path):
        if not os.path.isfile(path):
            raise PretrainedError(f"{path}: missing; the model folder is incomplete")
    with open(params_path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["params_sha256"]:
        raise PretrainedError(f"{params_path}: sha256 {digest} differs from the manifest's "
                              f"{manifest['params_sha256']}; the file is damaged or was replaced "
                              "(reinstall galr-jax, or release the model again)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = config_from_saved(yaml.safe_load(f), config_path)
    except (yaml.YAMLError, ConfigError) as e:
        raise PretrainedError(f"{config_path}: unusable config ({e})") from e
    variables = _restore_params(params_path, data, config)
    return Pretrained(name, folder, config, variables, manifest)
