"""galr-jax: GALR (globally attentive, locally recurrent) speech separation in JAX/Flax.

The model names are resolved on first use (PEP 562), so that importing a light
submodule (``galr_jax.config``, ``galr_jax.training.host_memory``) does not import JAX: the
command lines parse their arguments, and tune the host allocator, before JAX starts.

Modules that used to sit here (``galr_jax.losses``, ``galr_jax.convert``,
``galr_jax.exported``, ...) moved into the subpackages; their old names still import
the same modules (:mod:`galr_jax._moved`).
"""

import importlib

from galr_jax import _lazy, _moved

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "galr_jax.config",
    "ConfigError": "galr_jax.config",
    "load_config": "galr_jax.config",
    "SeparationModel": "galr_jax.models",
    "build_model": "galr_jax.models",
}

__all__ = sorted(_EXPORTS)

_moved.install()
_exported_name, __dir__ = _lazy.exports(__name__, _EXPORTS)


def __getattr__(name):
    # ``from galr_jax import exported`` and ``galr_jax.losses`` after ``import galr_jax``:
    # a moved module, imported through its old name.
    if f"{__name__}.{name}" in _moved.MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    return _exported_name(name)
