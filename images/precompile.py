"""Precompile the bytecode of every module the stages import, in the image's builder stage.

The image strips all ``__pycache__`` folders and runs as a user who cannot write the venv, so without this every
container start would compile torch and friends again (seconds per pod). Only what the stages actually import is
compiled, as unchecked-hash ``.pyc`` files (valid whatever the file times become after the copy between stages).

Usage: ``python images/precompile.py`` with the image's venv python.
"""

from __future__ import annotations

import importlib
import pkgutil
import py_compile
import sys


def import_all_stages() -> list[str]:
    """Import every module of the ``stages`` package; return the names that failed to import."""
    import stages

    failed = []
    for info in pkgutil.walk_packages(stages.__path__, prefix="stages."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - a module that cannot import here is reported, not fatal
            failed.append(f"{info.name} ({type(exc).__name__}: {exc})")
    return failed


def compile_loaded(prefix: str) -> int:
    """Compile the source of every loaded module under ``prefix``; return how many files were compiled."""
    count = 0
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py") or not path.startswith(prefix):
            continue
        py_compile.compile(path, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        count += 1
    return count


def main() -> int:
    """Import the stages and the heavy libraries they load lazily, then compile what was loaded."""
    failed = import_all_stages()
    for name in ("torch", "numpy", "scipy.ndimage", "SimpleITK", "batchgenerators", "skimage", "boto3"):
        importlib.import_module(name)
    count = compile_loaded(sys.prefix)
    sys.stdout.write(f"precompiled {count} modules under {sys.prefix}\n")
    for line in failed:
        sys.stderr.write(f"precompile: could not import {line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
