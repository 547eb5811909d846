"""The package's former module names, still importable after the modules moved into
subpackages (models, data, training, evaluation, inference, interop).

``import galr_jax.losses``, ``from galr_jax.convert import torch_to_flax`` or
``python -m galr_jax.separate`` give the module at its new place, the same object
(:data:`MOVED` maps old name -> new name). ``galr_jax/__init__.py`` puts the finder
below on ``sys.meta_path``; it answers for the names in :data:`MOVED` only. The
package's own code imports the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Optional, Sequence

MOVED = {
    "galr_jax.checkpoints": "galr_jax.training.checkpoints",
    "galr_jax.convert": "galr_jax.interop.convert",
    "galr_jax.demo_data": "galr_jax.data.demo",
    "galr_jax.evaluate_checkpoint": "galr_jax.evaluation.cli",
    "galr_jax.export_cli": "galr_jax.inference.export_cli",
    "galr_jax.exported": "galr_jax.inference.exported",
    "galr_jax.host_memory": "galr_jax.training.host_memory",
    "galr_jax.interop_cli": "galr_jax.interop.cli",
    "galr_jax.losses": "galr_jax.training.losses",
    "galr_jax.metrics": "galr_jax.evaluation.metrics",
    "galr_jax.separate": "galr_jax.inference.cli",
    "galr_jax.stream_cli": "galr_jax.inference.stream_cli",
    "galr_jax.summary": "galr_jax.models.summary",
    "galr_jax.torch_reference": "galr_jax.interop.torch_reference",
    "galr_jax.train_cli": "galr_jax.training.cli",
}
# galr_jax.evaluation (whole-utterance scoring) became the evaluation package, which
# re-exports galr_jax.evaluation.scoring's names.


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module imported under its new name."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the module ran when it was imported under its new name), but the
        import machinery has just set the module's ``__spec__`` to the old name's: put its
        own back, so that ``importlib.reload`` sees the new module."""
        module.__spec__ = self.own_spec

    def get_code(self, fullname: str) -> Optional[types.CodeType]:
        """The new module's code: what ``python -m OLD_NAME`` runs (runpy asks for it)."""
        spec = importlib.util.find_spec(MOVED[fullname])
        return spec.loader.get_code(spec.name)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MOVED:
            return None
        # The new module's file as the origin: ``python -m OLD_NAME`` sets __file__ and
        # sys.argv[0] from it.
        new = importlib.util.find_spec(MOVED[fullname])
        return importlib.util.spec_from_loader(fullname, _AliasLoader(), origin=new.origin)


def install() -> None:
    """Puts the finder first on ``sys.meta_path``, once per process: first, so that no
    other copy of galr-jax on the path (an older install) answers for an old name."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
