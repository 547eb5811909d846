"""galr-jax: GALR (globally attentive, locally recurrent) speech separation in JAX/Flax."""

from galr_jax.config import Config, ConfigError, load_config
from galr_jax.models import SeparationModel, build_model

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "SeparationModel", "build_model", "load_config"]
