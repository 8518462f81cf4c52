"""``lightning_mosaic.pytorch_lightning``: the Lightning layer for projects that ``import pytorch_lightning``.

Lightning ships twice: as ``lightning.pytorch`` (the unified package) and as the standalone
``pytorch_lightning`` package most public Lightning code still imports. Their classes are distinct,
so a strategy built on ``lightning.pytorch.strategies.DDPStrategy`` is refused by a
``pytorch_lightning.Trainer``. Lightning itself builds ``pytorch_lightning`` from the same sources
by renaming imports; this module does the same at import time: ``lightning_mosaic.pytorch_lightning``
and its submodules execute the files of ``lightning_mosaic/lightning/`` with ``lightning.pytorch``
read as ``pytorch_lightning``, ``lightning.fabric`` as ``lightning_fabric`` and the layer's own name
as the mirror's. One source, two importable layers; tracebacks point at the real files.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

MIRROR = "lightning_mosaic.pytorch_lightning"
_SOURCE_DIR = Path(__file__).resolve().parent / "lightning"

_RENAMES = (
    (re.compile(r"(?<![\w.])lightning_mosaic\.lightning\b"), MIRROR),
    (re.compile(r"(?<![\w.])lightning\.pytorch\b"), "pytorch_lightning"),
    (re.compile(r"(?<![\w.])lightning\.fabric\b"), "lightning_fabric"),
)


def translate(source: str) -> str:
    """The layer's source with its imports renamed for the standalone ``pytorch_lightning`` package."""
    for pattern, replacement in _RENAMES:
        source = pattern.sub(replacement, source)
    return source


def source_file(fullname: str) -> Path | None:
    """The file of ``lightning_mosaic/lightning/`` that mirror module ``fullname`` executes."""
    if fullname == MIRROR:
        return _SOURCE_DIR / "__init__.py"
    if not fullname.startswith(MIRROR + "."):
        return None
    path = _SOURCE_DIR.joinpath(*fullname[len(MIRROR) + 1 :].split(".")).with_suffix(".py")
    return path if path.is_file() else None


class MirrorFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and executes the modules of ``lightning_mosaic.pytorch_lightning``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        origin = source_file(fullname)
        if origin is None:
            return None
        package = fullname == MIRROR
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=str(origin), is_package=package)
        spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ == MIRROR:
            try:
                importlib.import_module("pytorch_lightning")
            except ImportError as err:
                raise ModuleNotFoundError(
                    f"{MIRROR} serves projects that import the standalone 'pytorch_lightning' package, which"
                    f" cannot be imported ({err}): pip install pytorch-lightning, or use"
                    " lightning_mosaic.lightning with the 'lightning' package",
                    name="pytorch_lightning",
                ) from err
        origin = str(module.__spec__.origin)
        code = compile(translate(Path(origin).read_text(encoding="utf-8")), origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # our own files, imports renamed


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MirrorFinder) for finder in sys.meta_path):
        sys.meta_path.append(MirrorFinder())
