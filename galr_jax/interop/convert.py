"""Weight conversion between the PyTorch reference (``state_dict``) and the Flax model.

One table, :data:`MODULES`, lists how each torch module of
:mod:`galr_jax.interop.torch_reference` corresponds to a Flax module of :mod:`galr_jax.models`
and which layout conversion (``kind``) its parameters need. Layout conversions only
transpose, split or merge; every result is then reshaped to the shape the target model
expects (this is what turns a ``[D, D]`` kernel into Flax attention's
``[D, heads, D/heads]``, or a 1x1 conv weight ``[out, in, 1]`` into ``[out, in]``).

Both directions first check the input against the keys and shapes the config implies
(the torch model built on the ``meta`` device; the Flax model through
``jax.eval_shape``) and raise :class:`ConversionError` naming the first missing, extra
or mis-shaped key before converting anything.

LSTM biases: torch keeps two biases per direction (``bias_ih`` and ``bias_hh``), which
only ever appear as their sum; Flax keeps that sum (``lstm/bias``). Torch -> Flax adds
them; Flax -> torch puts the whole sum into ``bias_ih`` and zeros into ``bias_hh``.
Hence torch -> Flax -> torch is exact when ``bias_hh`` is zero, and otherwise gives a
different state_dict that computes the same function; Flax -> torch -> Flax is exact.

Example:
  >>> variables = torch_to_flax(torch_model.state_dict(), config)
  >>> estimates = build_model(config).apply(variables, mixture)
  >>> torch_model.load_state_dict(flax_to_torch(variables, config))
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import torch

from galr_jax.config import Config, ModelConfig
from galr_jax.interop.torch_reference import build_torch_model
from galr_jax.models import build_model

Arrays = Dict[str, np.ndarray]
Shapes = Dict[str, Tuple[int, ...]]
OrderedShapes = collections.OrderedDict[str, Tuple[int, ...]]
StateDict = collections.OrderedDict[str, torch.Tensor]

_LSTM_DIRECTIONS = ("l0", "l0_reverse")  # torch's suffixes; Flax stacks them on axis 0
_SHAPE_PROBE_SAMPLES = 16  # any input length gives the same parameter shapes


class ConversionError(ValueError):
    """Weights do not fit the config, or cannot be converted; the message names the key."""


# ---------------------------------------------------------------------------------------
# Layout conversions, one pair per kind. Each maps the parameters of one module, by name,
# to the other framework's names; shapes are fixed up afterwards by reshaping.


def _dense_to_flax(p: Arrays) -> Arrays:
    # Linear [out, in] or Conv1d [out, in, k] with in*k inputs -> kernel [in*k, out].
    out = {"kernel": p["weight"].reshape(p["weight"].shape[0], -1).T}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def _dense_to_torch(p: Arrays) -> Arrays:
    out = {"weight": p["kernel"].T}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def _decoder_to_flax(p: Arrays) -> Arrays:
    # ConvTranspose1d(N -> 1) weight [N, 1, L] -> kernel [N, L]: already input-major.
    return {"kernel": p["weight"]}


def _decoder_to_torch(p: Arrays) -> Arrays:
    return {"weight": p["kernel"]}


def _norm_to_flax(p: Arrays) -> Arrays:
    return {"scale": p["weight"], "bias": p["bias"]}


def _norm_to_torch(p: Arrays) -> Arrays:
    return {"weight": p["scale"], "bias": p["bias"]}


def _prelu_to_flax(p: Arrays) -> Arrays:
    return {"negative_slope": p["weight"]}


def _prelu_to_torch(p: Arrays) -> Arrays:
    return {"weight": p["negative_slope"]}


def _initial_state(p: Arrays) -> Arrays:
    # GALR's learned h0/c0: the same names on both sides (Flax keeps them in "lstm").
    return {"h0": p["h0"], "c0": p["c0"]}


def _lstm_to_flax(p: Arrays) -> Arrays:
    def stacked(name: str) -> np.ndarray:
        return np.stack([p[f"{name}_{d}"].T for d in _LSTM_DIRECTIONS])

    return {
        "kernel_ih": stacked("weight_ih"),
        "kernel_hh": stacked("weight_hh"),
        "bias": np.stack([p[f"bias_ih_{d}"] + p[f"bias_hh_{d}"] for d in _LSTM_DIRECTIONS]),
    }


def _lstm_to_torch(p: Arrays) -> Arrays:
    out = {}
    for index, d in enumerate(_LSTM_DIRECTIONS):
        out[f"weight_ih_{d}"] = p["kernel_ih"][index].T
        out[f"weight_hh_{d}"] = p["kernel_hh"][index].T
        out[f"bias_ih_{d}"] = p["bias"][index]
        out[f"bias_hh_{d}"] = np.zeros_like(p["bias"][index])  # the sum lives in bias_ih
    return out


_ATTENTION_INPUTS = ("query", "key", "value")  # the order of torch's stacked in_proj


def _attention_to_flax(p: Arrays) -> Arrays:
    weights = np.split(p["in_proj_weight"], len(_ATTENTION_INPUTS))
    biases = np.split(p["in_proj_bias"], len(_ATTENTION_INPUTS))
    out = {}
    for name, weight, bias in zip(_ATTENTION_INPUTS, weights, biases):
        out[f"{name}/kernel"] = weight.T  # [D, D], reshaped to [D, heads, D/heads]
        out[f"{name}/bias"] = bias
    out["out/kernel"] = p["out_proj.weight"].T  # [D, D], reshaped to [heads, D/heads, D]
    out["out/bias"] = p["out_proj.bias"]
    return out


def _attention_to_torch(p: Arrays) -> Arrays:
    def input_major(kernel: np.ndarray) -> np.ndarray:  # [D, heads, D/heads] -> [D, D]
        return kernel.reshape(kernel.shape[0], -1)

    out_kernel = p["out/kernel"]  # [heads, D/heads, D]
    return {
        "in_proj_weight": np.concatenate(
            [input_major(p[f"{name}/kernel"]).T for name in _ATTENTION_INPUTS]),
        "in_proj_bias": np.concatenate(
            [p[f"{name}/bias"].reshape(-1) for name in _ATTENTION_INPUTS]),
        "out_proj.weight": out_kernel.reshape(-1, out_kernel.shape[-1]).T,
        "out_proj.bias": p["out/bias"],
    }


class _Kind(NamedTuple):
    to_flax: Callable[[Arrays], Arrays]
    to_torch: Callable[[Arrays], Arrays]


KINDS = {
    "dense": _Kind(_dense_to_flax, _dense_to_torch),
    "decoder": _Kind(_decoder_to_flax, _decoder_to_torch),
    "norm": _Kind(_norm_to_flax, _norm_to_torch),
    "prelu": _Kind(_prelu_to_flax, _prelu_to_torch),
    "initial_state": _Kind(_initial_state, _initial_state),
    "lstm": _Kind(_lstm_to_flax, _lstm_to_torch),
    "attention": _Kind(_attention_to_flax, _attention_to_torch),
}

_BLOCK = r"blocks\.(?P<block>\d+)"
_RECURRENT = r"(?:locally_recurrent|intra|inter)"

# Torch module (regex, full match; first match wins) -> Flax module and kind. The Flax
# module is the template filled with the named groups, dots turned into slashes. The torch
# attention module owns its out_proj Linear, so the "attention" kind converts both.
MODULES = (
    (r"encoder\.conv", "encoder", "dense"),
    (r"input_norm", "input_norm", "norm"),
    (r"bottleneck", "bottleneck", "dense"),
    (rf"{_BLOCK}\.(?P<path>{_RECURRENT})", "blocks_{block}/{path}/lstm", "initial_state"),
    (rf"{_BLOCK}\.(?P<path>{_RECURRENT}\.lstm)", "blocks_{block}/{path}", "lstm"),
    (rf"{_BLOCK}\.(?P<path>{_RECURRENT}\.proj|globally_attentive\.(?:to|from)_low_dim)",
     "blocks_{block}/{path}", "dense"),
    (rf"{_BLOCK}\.(?P<path>\w+\.norm\w*)", "blocks_{block}/{path}", "norm"),
    (rf"{_BLOCK}\.(?P<path>globally_attentive\.attention)", "blocks_{block}/{path}", "attention"),
    (r"mask_head\.prelu", "mask_head/prelu", "prelu"),
    (r"mask_head\.(?P<path>to_sources|gate_tanh|gate_sigmoid|to_filters)", "mask_head/{path}",
     "dense"),
    (r"decoder\.conv", "decoder", "decoder"),
)


def _match_module(torch_module: str) -> Tuple[str, _Kind]:
    for pattern, flax_template, kind in MODULES:
        match = re.fullmatch(pattern, torch_module)
        if match:
            return flax_template.format(**match.groupdict()).replace(".", "/"), KINDS[kind]
    raise ConversionError(f"{torch_module}: no Flax counterpart in convert.MODULES")


def _torch_groups(keys) -> collections.OrderedDict[str, list]:
    """Groups state_dict keys by module; attention's ``out_proj`` stays with its owner."""
    groups = collections.OrderedDict()
    for key in keys:
        module, name = key.rsplit(".", 1)  # every key of the reference is module.param
        if module.endswith(".out_proj"):
            module, name = module[: -len(".out_proj")], f"out_proj.{name}"
        groups.setdefault(module, []).append(name)
    return groups


# ---------------------------------------------------------------------------------------
# Expected keys and shapes for a config.


def _model_config(config: Union[Config, ModelConfig]) -> ModelConfig:
    model = config.model if isinstance(config, Config) else config
    if not isinstance(model, ModelConfig):
        raise TypeError(f"config: expected Config or ModelConfig, got {type(config).__name__}")
    return model


@functools.lru_cache(maxsize=16)
def _expected_torch_shapes(model: ModelConfig) -> OrderedShapes:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        state = build_torch_model(model).state_dict()
    return collections.OrderedDict((k, tuple(v.shape)) for k, v in state.items())


@functools.lru_cache(maxsize=16)
def _expected_flax_shapes(model: ModelConfig) -> Shapes:
    probe = jnp.zeros((1, _SHAPE_PROBE_SAMPLES), jnp.float32)
    variables = jax.eval_shape(build_model(model).init, jax.random.PRNGKey(0), probe)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables)["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def expected_torch_shapes(config: Union[Config, ModelConfig]) -> OrderedShapes:
    """Keys and shapes of the torch reference's ``state_dict`` for ``config``, in its order."""
    return collections.OrderedDict(_expected_torch_shapes(_model_config(config)))


def expected_flax_shapes(config: Union[Config, ModelConfig]) -> Shapes:
    """``'/'``-joined paths (below ``params``) and shapes of the Flax model's parameters."""
    return dict(_expected_flax_shapes(_model_config(config)))


def _check_against(got: Mapping[str, tuple], expected: Mapping[str, tuple], what: str,
                   prefix: str = "") -> None:
    """Raises ConversionError naming the first missing, then extra, then mis-shaped key."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    misshaped = [k for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    summary = (f"({len(missing)} missing, {len(extra)} unexpected, {len(misshaped)} mis-shaped "
               f"keys in all; does the config match these weights?)")
    if missing:
        k = missing[0]
        raise ConversionError(
            f"{what}: missing key '{prefix}{k}' (expected shape {expected[k]}) {summary}")
    if extra:
        k = extra[0]
        raise ConversionError(
            f"{what}: unexpected key '{prefix}{k}' (shape {tuple(got[k])}) {summary}")
    if misshaped:
        k = misshaped[0]
        raise ConversionError(f"{what}: key '{prefix}{k}' has shape {tuple(got[k])}, expected "
                              f"{expected[k]} {summary}")


def _as_float32(value: Any, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise ConversionError(f"{key}: expected floating-point weights, got {value.dtype}")
        return value.detach().to(device="cpu", dtype=torch.float32).numpy()
    array = np.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):  # jnp also knows bfloat16
        raise ConversionError(f"{key}: expected floating-point weights, got {array.dtype}")
    return array.astype(np.float32)


def _reshaped(arrays: Arrays, shapes: Mapping[str, tuple], what: str) -> Arrays:
    """Reshapes converted arrays to the target shapes; sizes must already agree."""
    out = {}
    for key, array in arrays.items():
        if key not in shapes or array.size != int(np.prod(shapes[key])):
            raise ConversionError(f"{what}: converted '{key}' {array.shape} does not fit the "
                                  f"target model (convert.MODULES is out of date)")
        out[key] = array.reshape(shapes[key]).copy()  # C-contiguous, owns its memory
    _check_against({k: v.shape for k, v in out.items()}, shapes, f"{what} (convert.MODULES)")
    return out


# ---------------------------------------------------------------------------------------
# Public conversions.


def torch_to_flax(state_dict: Mapping[str, Any], config: Union[Config, ModelConfig]) -> dict:
    """Converts a torch reference ``state_dict`` to Flax variables.

    Args:
      state_dict: keys and shapes of ``build_torch_model(config).state_dict()``; values
        torch tensors or arrays of any float dtype.
      config: the run config (or its ``model`` section) the weights belong to.

    Returns:
      ``{"params": nested dict of float32 numpy arrays}`` for ``build_model(config)``.
      Each LSTM ``bias`` is torch's ``bias_ih + bias_hh``.

    Raises:
      ConversionError: a key is missing, unexpected or has the wrong shape for ``config``.
    """
    model = _model_config(config)
    _check_against({k: tuple(v.shape) for k, v in state_dict.items()},
                   _expected_torch_shapes(model), "torch state_dict")
    flat: Arrays = {}
    for torch_module, names in _torch_groups(state_dict).items():
        flax_module, kind = _match_module(torch_module)
        params = {n: _as_float32(state_dict[f"{torch_module}.{n}"], f"{torch_module}.{n}")
                  for n in names}
        for name, array in kind.to_flax(params).items():
            flat[f"{flax_module}/{name}"] = array
    flat = _reshaped(flat, _expected_flax_shapes(model), "torch -> flax")
    return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


def flax_to_torch(variables: Mapping[str, Any], config: Union[Config, ModelConfig]) -> StateDict:
    """Converts Flax variables to a torch reference ``state_dict``.

    Args:
      variables: ``{"params": ...}`` of ``build_model(config)`` (jax or numpy arrays).
      config: the run config (or its ``model`` section).

    Returns:
      An ``OrderedDict`` of float32 torch tensors in ``state_dict`` order, ready for
      ``build_torch_model(config).load_state_dict``. Each LSTM's merged bias goes to
      ``bias_ih_*``; ``bias_hh_*`` are zeros.

    Raises:
      ConversionError: ``params`` is absent, or a key is missing, unexpected or has the
        wrong shape for ``config``.
    """
    model = _model_config(config)
    variables = flax.core.unfreeze(variables)
    if "params" not in variables:
        raise ConversionError(f"flax variables: no 'params' collection (got {sorted(variables)})")
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    _check_against({k: tuple(np.shape(v)) for k, v in flat.items()}, _expected_flax_shapes(model),
                   "flax variables", prefix="params/")
    expected = _expected_torch_shapes(model)
    converted: Arrays = {}
    for torch_module in _torch_groups(expected):
        flax_module, kind = _match_module(torch_module)
        params = {k[len(flax_module) + 1:]: _as_float32(v, f"params/{k}")
                  for k, v in flat.items() if k.startswith(flax_module + "/")}
        for name, array in kind.to_torch(params).items():
            converted[f"{torch_module}.{name}"] = array
    converted = _reshaped(converted, expected, "flax -> torch")
    return collections.OrderedDict((k, torch.from_numpy(converted[k])) for k in expected)


def main(argv=None) -> int:
    """``galr-convert`` (:mod:`galr_jax.interop.cli`), also here for ``python -m
    galr_jax.convert`` and the entry points of installs made before the layout move."""
    from galr_jax.interop.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
