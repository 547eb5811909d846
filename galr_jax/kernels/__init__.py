"""The model's primitives, each twice: a plain ``reference`` and a CPU-``tuned`` version.

``reference`` is what a Flax user expects: an LSTM cell in ``lax.scan``,
``jax.nn.dot_product_attention``, LayerNorm and gLN written as their definitions, a
Dense layer's ``x @ W + b``, all differentiated by JAX. ``tuned`` is the same
arithmetic with hand-written backward passes, reductions as matrix-vector products and
data dependencies that steer XLA:CPU's scheduler (``scheduling.py``), each measured on
a 2-core CPU (docs/benchmarks.md). Both read the same parameters, so a checkpoint, the
PyTorch conversion and a pretrained model run under either.

``runtime.kernels`` picks one; ``auto`` is ``tuned`` on CPU and ``reference`` elsewhere,
decided when the model is built (docs/kernels.md says why).
"""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

import jax

from galr_jax.config import KERNEL_CHOICES
# Where the tuned kernels were measured; on other backends auto trusts XLA's own fusion.
TUNED_BACKENDS = ("cpu",)

Implementation = TypeVar("Implementation", bound=Callable)


def resolve(kernels: str) -> str:
    """``reference`` or ``tuned`` for a ``runtime.kernels`` value, ``auto`` by JAX's
    default backend."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels: {kernels!r} is not one of {', '.join(KERNEL_CHOICES)}")
    if kernels == "auto":
        return "tuned" if jax.default_backend() in TUNED_BACKENDS else "reference"
    return kernels


def pick(implementations: Mapping[str, Implementation], kernels: str) -> Implementation:
    """``implementations[resolve(kernels)]``: a primitive's version for ``kernels``."""
    return implementations[resolve(kernels)]
