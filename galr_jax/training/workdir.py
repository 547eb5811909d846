"""The run folder: checked writable before any compile, with its config and versions.

``WORKDIR/config.yaml`` holds the full config of the run (defaults included, with
its schema version) and ``WORKDIR/versions.json`` the software and devices it ran
with. A second start with the same workdir resumes the run: its architecture (the
``model`` section) must equal the saved one (a clear error otherwise); the other
sections may change (more ``train.num_steps``, ``runtime.remat=true`` after an out of
memory) and the differences are logged. The saved config is read leniently
(:func:`galr_jax.config.config_from_saved`), so a workdir of an older version resumes.

The workdir is an :mod:`etils.epath` path: ``gs://bucket/run`` works where the
installed file-system support does (``gcsfs``, or TensorFlow's ``tf.io.gfile``).
"""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import logging
import os
import platform
import subprocess
import sys
from typing import Any

import jax
import yaml
from etils import epath

from galr_jax.config import Config, config_from_saved, config_to_dict, save_config
from galr_jax.training.checkpointer import check_model_config
from galr_jax.training.checkpoints import PathLike, as_path

CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "soundfile",
             "tensorboardX", "galr-jax")
_GIT_TIMEOUT_S = 5

log = logging.getLogger(__name__)


class WorkdirError(OSError):
    """The workdir cannot be created or written; the message names it and the reason."""


# Bytes written by the probe: enough to need a data block, not just an inode.
_PROBE_BYTES = 4096


def _check_writable(workdir: epath.Path) -> None:
    """Creates ``workdir`` and writes a probe file, so a full or read-only disk fails now."""
    probe = workdir / f".write-probe-{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            try:
                descriptor = f.fileno()
            except (AttributeError, io.UnsupportedOperation):
                descriptor = None  # an object store: closing the file uploads it
            if descriptor is not None:  # a local file: make the disk take the bytes now
                os.fsync(descriptor)
        probe.unlink()
    except OSError as e:
        reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EFBIG: "the file size limit is exceeded"}.get(e.errno, e.strerror)
        raise WorkdirError(e.errno, f"{workdir}: cannot write the run folder ({reason})") from e


def software_versions() -> dict[str, Any]:
    """Package versions, Python, platform, devices and (if available) the git commit."""
    versions: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    versions["processes"] = jax.process_count()
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=_GIT_TIMEOUT_S)
        if commit.returncode == 0:
            versions["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return versions


def _changed_fields(old: dict, new: dict) -> list[str]:
    return [f"{section}.{key}: {old[section].get(key)!r} -> {value!r}"
            for section, fields in new.items() for key, value in fields.items()
            if old.get(section, {}).get(key) != value]


def prepare_workdir(workdir: PathLike, config: Config) -> bool:
    """Checks and fills the run folder; returns True if it belongs to an earlier run.

    Raises:
      WorkdirError: the folder cannot be created or written.
      ConfigError: an earlier run in this folder used another architecture, or its
        saved config has an unknown architecture key.
    """
    workdir = as_path(workdir)
    config_path = workdir / CONFIG_FILE
    resuming = config_path.exists()
    if resuming:
        saved = yaml.safe_load(config_path.read_text()) or {}
        check_model_config(saved, config, str(config_path))
        changes = _changed_fields(config_to_dict(config_from_saved(saved, str(config_path))),
                                  config_to_dict(config))
        if changes:
            log.warning("resuming %s with changed settings: %s", workdir, "; ".join(changes))
    if jax.process_index() == 0:
        _check_writable(workdir)
        save_config(config, config_path)
        versions_path = workdir / VERSIONS_FILE
        tmp = workdir / f"{VERSIONS_FILE}.tmp"
        tmp.write_text(json.dumps(software_versions(), indent=2))
        tmp.replace(versions_path)
    return resuming
