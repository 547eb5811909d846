"""Operation counts that see every iteration of a loop.

XLA's cost analysis counts the body of a while loop once, whatever its trip count,
so on a scanned LSTM it misses almost all the work. Two counts that do not:

* :func:`xla_flops`: XLA's cost analysis of the function lowered with the LSTM loops
  fully unrolled (every step is then straight-line HLO). Counts every floating-point
  operation, elementwise ones included.
* :func:`matmul_flops`: 2 x multiply-accumulates of the matrix products and
  convolutions in the function's jaxpr, scan bodies multiplied by their length. The
  same quantity as PyTorch's ``FlopCounterMode``, so JAX and PyTorch compare directly.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core


def _dot_general_flops(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> int:
    kernel_shape = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    per_output = kernel_shape[spec[1]] * math.prod(kernel_shape[d] for d in spec[2:])
    return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def _jaxpr_matmul_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "while":
            raise ValueError("matmul_flops: a while loop has no static trip count")
        elif name == "cond":
            total += max(_jaxpr_matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            repeats = eqn.params["length"] if name == "scan" else 1
            total += repeats * sum(_jaxpr_matmul_flops(sub) for sub in _sub_jaxprs(eqn))
    return total


def matmul_flops(fn: Callable, *args: Any) -> int:
    """2 x multiply-accumulates of every matrix product and convolution ``fn(*args)`` runs."""
    return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(fn: Callable, *args: Any) -> float:
    """XLA's cost-analysis FLOPs of ``jax.jit(fn)`` lowered (not compiled) on ``args``.

    Callers pass a function whose loops are unrolled; see the module docstring.
    """
    return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])
