"""galr-jax: GALR (globally attentive, locally recurrent) speech separation in JAX/Flax.

The model names are resolved on first use (PEP 562), so that importing a light
submodule (``galr_jax.config``, ``galr_jax.training.host_memory``) does not import JAX:
the command lines parse their arguments, and tune the host allocator, before JAX
starts.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "galr_jax.config",
    "ConfigError": "galr_jax.config",
    "load_config": "galr_jax.config",
    "SeparationModel": "galr_jax.models",
    "build_model": "galr_jax.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'galr_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
