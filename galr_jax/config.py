"""Typed configuration: dataclasses loaded from YAML with ``key=value`` overrides.

One config object (:class:`Config`) carries every hyperparameter of a run, split
into ``model``, ``runtime``, ``data``, ``train`` and ``eval`` sections. ``model`` is
the architecture (what the parameters mean; a resumed run or a restored checkpoint
must match it); ``runtime`` is how the same network is computed (dtype,
recomputation, unrolling) and may change between runs of one workdir. Files in
``galr_jax/configs/`` (shipped with the package, and reachable as ``configs/`` in the
repository) set a subset of fields; everything else keeps the defaults below; they
are loaded by name (``load_config("galr_1.5m")``) or, like any other file, by path.
Overrides use dotted paths (``model.features=128``, ``train.learning_rate=5e-4``) and
are parsed as YAML scalars, then checked against the field's type.

Two parsers: user-written files and ``--set`` overrides are strict (an unknown key is
an error, so a typo fails); configs saved by an earlier version of this code
(:func:`config_from_saved`) are lenient outside the architecture, so adding, renaming
or removing a runtime or training field never makes old checkpoints unreadable.
Fields that moved are mapped through :data:`RENAMED_FIELDS` by both, with a warning.

Letters of the paper, for reference: L = ``model.window``, N = ``model.num_filters``,
D = ``model.features``, H = ``model.hidden``, K = ``model.segment_length``,
Q = ``model.low_dim``, C = ``model.num_sources``.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import importlib.resources
import logging
import os
import types
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml
from etils import epath


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


log = logging.getLogger(__name__)

# Version of the layout of saved configs (WORKDIR/config.yaml and each checkpoint's
# meta). 1: no version key, compute_dtype/lstm_unroll/remat/recompute_attention in
# ``model``. 2: those four in ``runtime``.
SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "schema_version"

# Fields that moved or were renamed: old dotted path -> new dotted path. Both parsers
# accept the old spelling with a warning; append an entry whenever a field moves.
RENAMED_FIELDS = {
    "model.compute_dtype": "runtime.compute_dtype",
    "model.lstm_unroll": "runtime.lstm_unroll",
    "model.remat": "runtime.remat",
    "model.recompute_attention": "runtime.recompute_attention",
}

# The section whose fields define what the parameters mean; never parsed leniently.
ARCHITECTURE_SECTION = "model"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the separation model (spec sections 1-4)."""

    separator: str = "galr"  # galr | dprnn
    sample_rate: int = 8000
    num_sources: int = 2  # C
    window: int = 16  # L, encoder kernel; stride L/2
    num_filters: int = 64  # N, encoder filters
    features: int = 64  # D, separator features (bottleneck output)
    hidden: int = 128  # H, LSTM units per direction
    segment_length: int = 100  # K, segment hop K/2
    low_dim: Optional[int] = 32  # Q; None disables the low-dimensional representation
    num_blocks: int = 6
    num_heads: int = 8
    attention_dropout: float = 0.1
    attention_residual: bool = True  # False reproduces the author's code (residual = y)
    mask_nonlinearity: str = "relu"  # relu | sigmoid
    norm_eps: float = 1e-5  # GALR's norms use 1e-5; asteroid's DPRNN gLN uses 1e-8
    # Causal GALR for streaming (docs/streaming.md): attention to past and current segments
    # only, per-frame LayerNorms instead of gLN; the parameters are the same as without.
    causal: bool = False
    attention_window: int = 0  # causal: segments attended, the current one included; 0: all


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the network is computed; the parameters mean the same under any of these."""

    compute_dtype: str = "float32"  # float32 | bfloat16 (params stay float32)
    lstm_unroll: int = 1  # scan unroll factor of the BiLSTM time loop
    remat: bool = False  # recompute each block's forward in its backward pass (models/remat.py)
    # GALR: recompute each block's multi-head attention in its backward pass (less memory,
    # a few % more step time; implied by remat)
    recompute_attention: bool = True
    # Implementation of the primitives (galr_jax/kernels/, docs/kernels.md): reference (plain
    # JAX), tuned (measured on XLA:CPU) or auto (tuned on CPU, reference on GPU/TPU).
    kernels: str = "auto"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the mixtures are and how batches are cut from them."""

    root: str = "data/demo"
    layout: str = "wsj0-mix"  # wsj0-mix | librimix
    train_split: str = "tr"
    valid_split: str = "cv"
    test_split: str = "tt"
    sample_rate: int = 8000
    crop_seconds: float = 4.0
    short_utterances: str = "pad"  # pad | drop
    bad_files: str = "skip"  # skip | error
    stereo: str = "error"  # error | downmix (average the channels, with a warning)
    dynamic_mixing: bool = False  # remix clean sources of different utterances on the fly
    dynamic_mixing_gain_db: float = 2.5  # each remixed source gets a gain uniform in [-g, g] dB
    # Augmentation of dynamically mixed examples (galr_jax/data/augment.py); zeros disable.
    augment_speed: float = 0.0  # per source: speed factor uniform in [1 - s, 1 + s]
    augment_gain_db: float = 0.0  # per example: one gain uniform in [-g, g] dB
    augment_band_prob: float = 0.0  # per source: probability of a random band-limit
    augment_reverb_prob: float = 0.0  # per example: probability of a simulated room
    augment_rooms: int = 64  # simulated rooms, computed once from train.seed
    num_workers: int = 2  # threads decoding a batch's rows; 0 decodes in one thread
    prefetch: int = 4  # batches decoded ahead
    workers: int = 0  # grain worker processes making training batches; 0: none (CPU default)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, parallelism, checkpoints and logging."""

    seed: int = 0
    batch_size: int = 4  # global batch over all devices and hosts
    num_steps: int = 100_000
    steps_per_epoch: int = 0  # 0: one pass over the training split
    learning_rate: float = 1e-3  # Adam
    clip_grad_norm: float = 5.0  # global gradient norm; 0 disables
    weight_decay: float = 0.0  # decoupled (AdamW), weight matrices only; 0 disables
    schedule: str = "constant"  # constant | exponential | plateau | cosine
    decay_rate: float = 0.98  # exponential: lr factor every decay_every_epochs epochs
    decay_every_epochs: int = 2
    warmup_steps: int = 0  # cosine: linear warm-up from 0 over these steps
    decay_steps: int = 0  # cosine: decay over the last decay_steps steps; 0: all after warm-up
    # (both shrink in proportion when they exceed num_steps, so a shortened run, e.g.
    # --set train.num_steps=500, keeps the shape of the schedule)
    final_lr_scale: float = 0.0  # cosine: the rate at num_steps, as a fraction of the base
    plateau_patience: int = 5  # plateau: validations without improvement before a reduction
    plateau_factor: float = 0.5  # plateau: lr factor of a reduction
    early_stop_patience: int = 0  # validations without improvement; 0 disables
    parallel: str = "pmap"  # pmap | shard_map (jit of shard_map on a Mesh)
    max_consecutive_skips: int = 100  # non-finite steps in a row before the run stops
    log_every: int = 10
    tensorboard: bool = True  # TensorBoard scalars besides metrics.jsonl
    eval_every: int = 500  # steps between validations; 0: once per epoch (patiences then count epochs)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # newest kept, besides the best by validation SI-SNRi
    async_checkpoints: bool = True
    max_valid_utterances: int = 0  # 0: the whole validation split


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Scoring and separation of whole utterances."""

    batch_size: int = 4
    bucket_seconds: Sequence[float] = (2.0, 4.0, 8.0, 16.0)
    chunk_seconds: float = 8.0  # long-audio chunk for separation
    chunk_overlap_seconds: float = 1.0  # > 0: speakers of neighbouring chunks are matched here
    # Long-audio chunks per forward pass (rounded up to a multiple of the devices). On one
    # CPU device a larger batch is no faster and costs memory (galr_1.5m peak RSS: 0.9 GB
    # at 1, 1.9 GB at 4); one chunk per virtual CPU device is (docs/benchmarks.md); raise it on
    # accelerators.
    chunk_batch_size: int = 1
    save_audio_examples: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


COMPUTE_DTYPE_NAMES = ("float32", "bfloat16")  # runtime.compute_dtype
KERNEL_CHOICES = ("reference", "tuned", "auto")  # runtime.kernels

_CHOICES = {
    "model.separator": ("galr", "dprnn"),
    "model.mask_nonlinearity": ("relu", "sigmoid"),
    "runtime.compute_dtype": COMPUTE_DTYPE_NAMES,
    "runtime.kernels": KERNEL_CHOICES,
    "data.layout": ("wsj0-mix", "librimix"),
    "data.short_utterances": ("pad", "drop"),
    "data.bad_files": ("skip", "error"),
    "data.stereo": ("error", "downmix"),
    "train.schedule": ("constant", "exponential", "plateau", "cosine"),
    "train.parallel": ("pmap", "shard_map"),
}


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Checks ``value`` against a field annotation; converts the lossless cases."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner[0])
    if origin in (collections.abc.Sequence, list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value))
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported field type {annotation!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(names))})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, path)
        else:
            kwargs[key] = _coerce(path, value, annotation)
    return cls(**kwargs)


def _as_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_as_dict(v) for v in obj]
    return obj


def config_to_dict(config: Config) -> dict:
    """Plain nested dict of a config (YAML-serialisable)."""
    return _as_dict(config)


def _renamed(path: str, where: str) -> str:
    """The current dotted path of a field; warns when ``path`` is an old spelling."""
    new = RENAMED_FIELDS.get(path)
    if new is None:
        return path
    log.warning("%s%s is deprecated; it is read as %s (write it there from now on)",
                f"{where}: " if where else "", path, new)
    return new


def _migrate(tree: dict, where: str = "") -> dict:
    """Moves fields of :data:`RENAMED_FIELDS` to their current place, with a warning each."""
    for old, new in RENAMED_FIELDS.items():
        old_section, old_key = old.split(".")
        section = tree.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        new_section, new_key = _renamed(old, where).split(".")
        target = tree.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{new_section}: expected a mapping, got {target!r}")
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{old}={value!r} and {new}={target[new_key]!r} are both given; "
                              f"keep only {new}")
        target.setdefault(new_key, value)
    return tree


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{key}: overrides name a section and a field, e.g. model.features=128")
    parts = _renamed(key, "--set").split(".")
    section = tree.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"{parts[0]}: expected a mapping")
    section[parts[1]] = yaml.safe_load(raw) if raw.strip() else ""


def _sections(tree: Mapping[str, Any]) -> dict:
    """A copy two levels deep without the schema version, which is no config field."""
    tree = dict(tree or {})
    version = tree.pop(SCHEMA_VERSION_KEY, None)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ConfigError(f"{SCHEMA_VERSION_KEY}: expected an integer, got {version!r}")
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def validate(config: Config) -> Config:
    """Checks the cross-field rules that shapes depend on; raises ConfigError."""
    flat = {f"{s}.{k}": v for s, sec in config_to_dict(config).items() for k, v in sec.items()}
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {', '.join(choices)}")
    m = config.model
    positive = ("sample_rate", "num_sources", "window", "num_filters", "features", "hidden",
                "segment_length", "num_blocks", "num_heads")
    for name in positive:
        if getattr(m, name) <= 0:
            raise ConfigError(f"model.{name}: must be positive, got {getattr(m, name)}")
    if config.runtime.lstm_unroll <= 0:
        raise ConfigError(f"runtime.lstm_unroll: must be positive, got {config.runtime.lstm_unroll}")
    if m.window % 2:
        raise ConfigError(f"model.window: must be even (stride is window/2), got {m.window}")
    if m.segment_length % 2:
        raise ConfigError(
            f"model.segment_length: must be even (hop is segment_length/2), got {m.segment_length}")
    if m.separator == "galr":
        if m.features % m.num_heads:
            raise ConfigError(
                f"model.num_heads: {m.num_heads} heads do not divide model.features={m.features}")
        if m.features % 2:
            raise ConfigError(
                f"model.features: must be even for the sinusoidal positional encoding, got {m.features}")
        if m.low_dim is not None and m.low_dim <= 0:
            raise ConfigError(f"model.low_dim: must be positive or none, got {m.low_dim}")
    if not 0.0 <= m.attention_dropout < 1.0:
        raise ConfigError(f"model.attention_dropout: must be in [0, 1), got {m.attention_dropout}")
    if m.norm_eps <= 0:
        raise ConfigError(f"model.norm_eps: must be positive, got {m.norm_eps}")
    if m.causal and m.separator != "galr":
        raise ConfigError(f"model.causal: only the galr separator has a causal form, "
                          f"got model.separator={m.separator}")
    if m.attention_window < 0:
        raise ConfigError(f"model.attention_window: must be 0 (all past segments) or more, "
                          f"got {m.attention_window}")
    if m.attention_window and not m.causal:
        raise ConfigError("model.attention_window: only a causal model (model.causal: true) "
                          "limits its attention")
    if config.data.sample_rate != m.sample_rate:
        raise ConfigError(
            f"data.sample_rate: {config.data.sample_rate} differs from model.sample_rate={m.sample_rate}")
    t = config.train
    for name in ("batch_size", "num_steps", "log_every", "checkpoint_every",
                 "keep_checkpoints", "max_consecutive_skips", "decay_every_epochs",
                 "plateau_patience"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name}: must be positive, got {getattr(t, name)}")
    for name in ("clip_grad_norm", "weight_decay", "steps_per_epoch", "early_stop_patience",
                 "max_valid_utterances", "eval_every", "warmup_steps", "decay_steps"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name}: must be 0 or more, got {getattr(t, name)}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: must be positive, got {t.learning_rate}")
    for name in ("decay_rate", "plateau_factor"):
        if not 0 < getattr(t, name) <= 1:
            raise ConfigError(f"train.{name}: must be in (0, 1], got {getattr(t, name)}")
    if not 0 <= t.final_lr_scale <= 1:
        raise ConfigError(f"train.final_lr_scale: must be in [0, 1], got {t.final_lr_scale}")
    d = config.data
    if d.crop_seconds <= 0:
        raise ConfigError(f"data.crop_seconds: must be positive, got {d.crop_seconds}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be 0 or more, got {d.num_workers}")
    if d.workers < 0:
        raise ConfigError(f"data.workers: must be 0 or more, got {d.workers}")
    if d.prefetch <= 0:
        raise ConfigError(f"data.prefetch: must be positive, got {d.prefetch}")
    if d.dynamic_mixing_gain_db < 0:
        raise ConfigError(
            f"data.dynamic_mixing_gain_db: must be 0 or more, got {d.dynamic_mixing_gain_db}")
    # Imported here: the data package pulls in soxr and scipy, which reading a config needs not.
    from galr_jax.data.augment import augment_config
    try:
        augment_config(d).check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    e = config.eval
    for name in ("batch_size", "chunk_batch_size"):
        if getattr(e, name) <= 0:
            raise ConfigError(f"eval.{name}: must be positive, got {getattr(e, name)}")
    if not 0 < e.chunk_overlap_seconds * 2 < e.chunk_seconds:
        raise ConfigError("eval.chunk_overlap_seconds: must be positive and under half of "
                          f"eval.chunk_seconds ({e.chunk_seconds}), got {e.chunk_overlap_seconds}")
    if not e.bucket_seconds or min(e.bucket_seconds) <= 0:
        raise ConfigError(f"eval.bucket_seconds: needs at least one positive duration, got "
                          f"{list(e.bucket_seconds)}")
    if e.save_audio_examples < 0:
        raise ConfigError(
            f"eval.save_audio_examples: must be 0 or more, got {e.save_audio_examples}")
    return config


def config_from_dict(tree: Mapping[str, Any], overrides: Iterable[str] = (),
                     where: str = "") -> Config:
    """Builds and validates a Config from a nested mapping plus ``key=value`` overrides.

    Strict: an unknown section or key is a :class:`ConfigError`. Old spellings of
    moved fields (:data:`RENAMED_FIELDS`) are accepted with a warning naming ``where``
    (the file the mapping came from, if any).
    """
    tree = _migrate(_sections(tree), where)
    for override in overrides:
        _apply_override(tree, override)
    return validate(_build(Config, tree, ""))


def config_from_saved(tree: Mapping[str, Any], where: str) -> Config:
    """Builds a Config from one saved by this or another version of the code.

    Lenient where the parameters do not depend on it: renamed fields are mapped
    (:data:`RENAMED_FIELDS`), unknown keys and sections other than ``model`` are
    dropped with a warning naming each, missing fields take their defaults. An
    unknown ``model`` key is an error, because the parameters' meaning would be unknown.

    Args:
      tree: the saved mapping (``WORKDIR/config.yaml`` or a checkpoint's meta).
      where: the file or checkpoint it came from, for the messages.

    Raises:
      ConfigError: an unknown architecture key or an invalid value; names ``where``.
    """
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config sections, got {tree!r}")
    version = tree.get(SCHEMA_VERSION_KEY, 1)
    try:
        tree = _migrate(_sections(tree), where)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        log.warning("%s: saved with config schema %d, newer than this code's %d; reading what "
                    "this code knows", where, version, SCHEMA_VERSION)
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for section in list(tree):
        if section not in fields:
            log.warning("%s: dropped unknown section %r of a saved config", where, section)
            del tree[section]
            continue
        values = tree[section]
        known = {f.name for f in dataclasses.fields(hints[section])}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else []
        if unknown and section == ARCHITECTURE_SECTION:
            raise ConfigError(
                f"{where}: unknown architecture key {ARCHITECTURE_SECTION}.{unknown[0]} (known: "
                f"{', '.join(sorted(known))}); the checkpoint was written by a version of "
                "galr-jax with another model and cannot be read by this one")
        for key in unknown:
            log.warning("%s: dropped unknown key %s.%s of a saved config", where, section, key)
            del values[key]
    try:
        return validate(_build(Config, tree, ""))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def saved_config_dict(config: Config) -> dict:
    """The mapping a config is saved as: every field plus :data:`SCHEMA_VERSION`."""
    return {SCHEMA_VERSION_KEY: SCHEMA_VERSION, **config_to_dict(config)}


# The configs shipped inside the package (the paper's, the baseline's, the demo's and the
# released models'), loadable by name; ``configs/`` in the repository links here.
SHIPPED_CONFIGS = importlib.resources.files(__package__) / "configs"
CONFIG_SUFFIX = ".yaml"


def shipped_config_names() -> list[str]:
    """The names :func:`load_config` accepts besides paths (``demo``, ``galr_1.5m``,
    ``pretrained/galr_voices_8k``, ...)."""
    names = []

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(CONFIG_SUFFIX):
                names.append(prefix + entry.name[:-len(CONFIG_SUFFIX)])

    walk(SHIPPED_CONFIGS, "")
    return sorted(names)


def resolve_config(path_or_name: str | os.PathLike) -> epath.Path:
    """The file a ``--config`` value names: an existing path, else a shipped config.

    A path wins over a shipped name, so a user's own ``demo.yaml`` in the working
    folder is never shadowed. Names may carry the ``.yaml`` suffix or not.

    Raises:
      FileNotFoundError: neither a file nor a shipped name; the message lists the names.
    """
    path = epath.Path(path_or_name)
    if path.is_file():
        return path
    name = os.fspath(path_or_name)
    shipped = SHIPPED_CONFIGS.joinpath(*name.split("/"))
    if not name.endswith(CONFIG_SUFFIX):
        shipped = shipped.with_name(shipped.name + CONFIG_SUFFIX)
    if shipped.is_file():
        return epath.Path(os.fspath(shipped))
    raise FileNotFoundError(f"{path}: config file not found, and not the name of a shipped "
                            f"config ({', '.join(shipped_config_names())})")


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Loads a YAML config, applies overrides (``"model.features=128"``) and validates.

    ``path`` is a file (local or an :mod:`etils.epath` URL) or the name of a shipped
    config (``"galr_1.5m"``, ``"demo"``, ``"pretrained/galr_voices_8k"``).

    Raises:
      FileNotFoundError: no such file and no such shipped config.
      ConfigError: unknown key, wrong type or an impossible combination; the message
        names the key.
    """
    path = resolve_config(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    try:
        if not isinstance(tree, Mapping):
            raise ConfigError(f"expected a mapping of config sections, got {tree!r}")
        return config_from_dict(tree, overrides, where=str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def add_override_argument(parser: argparse.ArgumentParser, dest: str = "overrides") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable: ``--set a=1 b=2`` equals ``--set a=1 --set b=2``."""
    parser.add_argument("--set", dest=dest, action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="override config fields, e.g. --set train.num_steps=100 "
                             "model.features=128 (repeatable)")


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Writes the full config (defaults included, with its schema version) as YAML.

    Atomic on local disks; ``path`` may be any :mod:`etils.epath` location (``gs://``).
    """
    path = epath.Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(saved_config_dict(config), sort_keys=False))
    tmp.replace(path)


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """Returns a copy with fields of sections replaced, e.g. ``replace(c, model={"features": 32})``."""
    tree = config_to_dict(config)
    for name, fields in sections.items():
        tree[name].update(fields)
    return config_from_dict(tree)
