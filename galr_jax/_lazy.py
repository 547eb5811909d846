"""Package attributes resolved on first use (PEP 562).

A package that re-exports its submodules' names imports those submodules, and all
they import, as soon as anything inside it is imported. Resolving the names on first
use instead keeps a light module light wherever it lives: ``galr_jax.training.cli``
parses its arguments and tunes the allocator before JAX is imported, and
``galr_jax.inference.exported`` runs a model without Flax, although their packages'
public names (``train_and_evaluate``, ``Separator``) need both.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, List, Mapping, Tuple


def exports(package: str, names: Mapping[str, str]) -> Tuple[Callable[[str], object],
                                                              Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    Args:
      package: the package's ``__name__``.
      names: public name -> the module that defines it. The module is imported when
        the name is first read, and the value is then kept in the package itself.
    """

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
