"""The user's ``torch.compile``: what is compiled, and how mosaic's watching leaves it compiled.

Mosaic watches one step through Python dispatch modes (the tracer, the router probe, the CUDA-graph
scan). A compiled frame that first runs under such a mode is skipped by TorchDynamo, and the skip
sticks to the code object for the rest of the process: a ``torch.compile(module)`` (whose frames
share one wrapper's code) or a compiled ``training_step`` would run eagerly from then on, silently.
:func:`eager_while_watched` runs the watched step under ``torch.compiler.set_stance("force_eager")``
instead: that step runs the user's code eagerly, and every later one runs it compiled.

:func:`how_compiled` says whether a module is compiled (``torch.compile(module)`` gives an
``OptimizedModule``; ``module.compile()`` sets ``_compiled_call_impl``) and :func:`replays_cuda_graphs`
whether it was compiled with CUDA graphs of its own (``mode="reduce-overhead"``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def how_compiled(module: nn.Module) -> str | None:
    """``"torch.compile(module)"``, ``"module.compile()"`` or None (not compiled)."""
    if "torch._dynamo" not in sys.modules:
        return None  # nothing was ever compiled in this process
    if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
        return "torch.compile(module)"
    if getattr(module, "_compiled_call_impl", None) is not None:
        return "module.compile()"
    return None


def compiler_config(module: nn.Module) -> dict[str, Any] | None:
    """The compiler's configuration of a compiled module (Inductor's options), None if unknown."""
    how = how_compiled(module)
    if how is None:
        return None
    source = module if how == "torch.compile(module)" else module._compiled_call_impl
    getter = getattr(source, "get_compiler_config", None)
    try:
        config = getter() if callable(getter) else None
    except Exception:  # a backend without a readable configuration
        return None
    return config if isinstance(config, dict) else None


def replays_cuda_graphs(module: nn.Module) -> bool:
    """Whether the module was compiled to replay CUDA graphs itself (``mode="reduce-overhead"``)."""
    config = compiler_config(module)
    return bool(config and config.get("triton.cudagraphs"))


def compiled_parts(root: nn.Module) -> dict[str, str]:
    """Dotted names of the compiled modules in ``root`` (itself: ``""``), with how each is compiled."""
    if "torch._dynamo" not in sys.modules:
        return {}
    found = {}
    if getattr(root, "_compiler_ctx", None):  # a LightningModule that Lightning compiles as a whole
        found[""] = "torch.compile(model)"
    for name, module in root.named_modules():
        how = how_compiled(module)
        if how is not None:
            found[name] = how
    return found


def compiled_note(found: dict[str, str]) -> str:
    """What mosaic does with the compiled modules ``found`` (from :func:`compiled_parts`), for the log."""
    shown = ", ".join(f"{name or 'the model'} ({how})" for name, how in found.items())
    whole = (
        "; the model compiled as a whole is compiled around the units (its graph breaks at each unit"
        " call, which the engine routes, and each unit's forward compiles on its own)"
        if "" in found
        else ""
    )
    return (
        f"compiled: {shown}. They run their compiled code in every step but the traced first one, which"
        f" runs eagerly while mosaic watches it{whole}"
    )


@contextmanager
def eager_while_watched() -> Iterator[None]:
    """Run compiled code eagerly inside the block, leaving it compiled for every call after it."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None or "torch._dynamo" not in sys.modules:
        yield  # nothing compiled yet: a frame compiled later never ran under the mode
        return
    with set_stance("force_eager"):
        yield
