"""Importing galr_jax (every module, and train.py / eval.py) changes nothing in the process.

The command lines set up logging (:mod:`galr_jax.cli_logging`) and the allocator
(:mod:`galr_jax.training.host_memory`) themselves; a library user who imports the package keeps
their own logging, hooks, signal handlers, environment and malloc settings, and JAX's
backends stay unstarted (``jax.distributed.initialize`` must come before them).

Runs in a fresh process. The third-party packages galr_jax imports are imported first,
so what they do on import is part of the baseline and only galr_jax's own effects count.
"""

import ast
import json
import os
import pkgutil
import subprocess
import sys

from subprocess_env import REPO, cpu_environment

ENTRY_SCRIPTS = ("train", "eval")  # the repository's top-level programs
# Loggers that galr_jax configured on import before (Orbax reports through absl).
LOGGERS = ("", "absl", "asyncio", "orbax", "jax", "galr_jax")


def _module_names() -> list[str]:
    import galr_jax
    names = ["galr_jax"] + [info.name for info in
                            pkgutil.walk_packages(galr_jax.__path__, "galr_jax.")]
    return names + list(ENTRY_SCRIPTS)


def _third_party_imports() -> list[str]:
    """The non-standard-library modules galr_jax's sources import, by their full names
    (importing ``orbax`` alone would not run what ``orbax.checkpoint`` does on import),
    and the names imported from them, which may be submodules."""
    paths = [os.path.join(REPO, f"{name}.py") for name in ENTRY_SCRIPTS]
    for folder, _, files in os.walk(os.path.join(REPO, "galr_jax")):
        paths += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    names = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    own = {"galr_jax", "__future__", *ENTRY_SCRIPTS}
    return sorted(n for n in names
                  if n.split(".")[0] not in own | set(sys.stdlib_module_names))


# Prints a JSON report: the state before and after importing galr_jax, and the modules
# that could not be imported for want of an optional dependency.
PROBE = r"""
import ctypes, importlib, json, logging, os, signal, sys, threading, warnings

def import_optional(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("galr_jax",) + ENTRY_SCRIPTS:
            raise
        return f"{name}: {error}"

# A name imported from a module is often a class or function, not a submodule: then
# there is nothing to import.
skipped = [s for s in map(import_optional, THIRD_PARTY) if s]

try:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc.mallinfo2.restype = MallInfo2
except (OSError, AttributeError):
    libc = None

def mmapped_large_block():
    # glibc's defaults serve a 64 MiB block with mmap (its mmap threshold moves up with
    # the blocks freed, but never past 32 MiB); keep_freed_memory's settings put every
    # block on the heap.
    if libc is None:
        return None
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mapped

def logger_state(name):
    logger = logging.getLogger(name)
    return {"level": logger.level, "handlers": [repr(h) for h in logger.handlers],
            "filters": [repr(f) for f in logger.filters], "disabled": logger.disabled}

def snapshot():
    import jax._src.xla_bridge as xb
    return {
        "unraisablehook": repr(sys.unraisablehook),
        "excepthook": repr(sys.excepthook),
        "threading_excepthook": repr(threading.excepthook),
        "loggers": {name: logger_state(name) for name in LOGGERS},
        "signals": {s.name: repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)},
        "environ": dict(os.environ),
        "warning_filters": len(warnings.filters),
        "mmapped_large_block": mmapped_large_block(),
        "jax_backends_started": xb.backends_are_initialized(),
    }

before = snapshot()
sys.path.insert(0, REPO)
skipped += [s for s in map(import_optional, MODULES) if s]
after = snapshot()
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("galr_jax",) + ENTRY_SCRIPTS)
print(json.dumps({"before": before, "after": after, "skipped": skipped, "imported": imported}))
"""


def test_importing_every_module_changes_nothing_in_the_process():
    modules = _module_names()
    assert "galr_jax.training.checkpointer" in modules and "galr_jax.inference" in modules
    probe = (f"REPO = {REPO!r}\nTHIRD_PARTY = {_third_party_imports()!r}\n"
             f"MODULES = {modules!r}\nENTRY_SCRIPTS = {ENTRY_SCRIPTS!r}\nLOGGERS = {LOGGERS!r}\n"
             + PROBE)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300, env=cpu_environment(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    before, after = report["before"], report["after"]
    # The probe could see the allocator's state and started no backend by itself.
    assert before["mmapped_large_block"] in (True, None)
    assert not before["jax_backends_started"]
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"importing galr_jax changed: {json.dumps(changed, indent=1)[:3000]}"
    # Only a module that needs a missing optional dependency (torch) may be left out.
    core = {"galr_jax.training", "galr_jax.training.checkpointer", "galr_jax.inference",
            "galr_jax.evaluation.cli", "galr_jax.inference.cli", "train", "eval"}
    assert core <= set(report["imported"]), (sorted(core - set(report["imported"])),
                                             report["skipped"])
