"""Choose which submodules of a model the engine runs as separate units.

A unit is a module the planner may place side by side with others: a modality encoder, a
projector, the LLM backbone. Units are named by their dotted path in the model, exactly as
``nn.Module.get_submodule`` and ``state_dict`` keys spell them (``"vision"``,
``"model.vision_tower"``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence

from torch import nn


def owns_parameters(module: nn.Module) -> bool:
    """True if ``module`` or any of its descendants holds a parameter (trainable or frozen)."""
    return next(module.parameters(), None) is not None


def candidates(root: nn.Module, prefix: str = "") -> list[str]:
    """Dotted names of the children of ``root.get_submodule(prefix)`` that own parameters."""
    parent = root.get_submodule(prefix) if prefix else root
    dot = f"{prefix}." if prefix else ""
    return [f"{dot}{name}" for name, child in parent.named_children() if owns_parameters(child)]


def check_names(names: Sequence[str] | None) -> list[str] | None:
    """Validate the shape of a ``modules=`` argument before any model is known.

    Returns the names as a list (or ``None`` for automatic selection). Raises ``TypeError`` for a
    value that is not a sequence of strings and ``ValueError`` for an empty list, an empty name or a
    name listed twice.
    """
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError(
            f"`modules` must be a list of module names, got the string {names!r}; did you mean [{names!r}]?"
        )
    try:
        names = list(names)
    except TypeError:
        raise TypeError(
            f"`modules` must be None or a list of module names, got {type(names).__name__}: {names!r}"
        ) from None
    if not names:
        raise ValueError(
            "`modules` is an empty list; pass None to select modules automatically, or name some"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"`modules` must hold module names (str), got {type(name).__name__}: {name!r}")
        if not name or name.startswith(".") or name.endswith(".") or ".." in name:
            raise ValueError(
                f"`modules` holds an invalid module name {name!r}; use dotted paths like 'model.vision'"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"module {name!r} is listed twice in `modules`: {names}")
        seen.add(name)
    return names


def called_units(units: Mapping[str, nn.Module], ran: Collection[int]) -> dict[str, nn.Module]:
    """``units`` with each one whose ``forward`` never ran (``ran``: ids of the modules whose forward
    did) but whose parts did replaced by those parts: its outermost descendants that own parameters
    and ran, found through containers such as ``nn.ModuleList``. A model that calls
    ``self.transformer.blocks[i]`` itself gets the blocks as units, not the transformer. A unit none of
    whose parts ran either (used only in validation) stays as it is."""
    out: dict[str, nn.Module] = {}
    for name, module in units.items():
        if id(module) in ran or not _any_ran(module, ran):
            out[name] = module
        else:
            out.update(_parts_that_ran(name, module, ran))
    return out


def _any_ran(module: nn.Module, ran: Collection[int]) -> bool:
    return any(id(m) in ran for m in module.modules())


def _parts_that_ran(prefix: str, module: nn.Module, ran: Collection[int]) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for child_name, child in module.named_children():
        if not owns_parameters(child) or not _any_ran(child, ran):
            continue
        name = f"{prefix}.{child_name}"
        if id(child) in ran:
            out[name] = child
        else:
            out.update(_parts_that_ran(name, child, ran))
    return out


def select_modules(root: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Resolve the units of ``root`` by name, in order.

    With ``names=None`` the units are the children of ``root`` that own parameters; where there is
    exactly one such child (a wrapper such as ``self.model``), its own children are used instead,
    repeatedly. Explicit names are dotted paths. An unknown name, a module listed twice (also under
    two names) or a module listed together with one of its descendants is a ``ValueError`` that names
    the offender and lists the valid candidates.
    """
    if names is None:
        return _auto(root)
    names = check_names(names)
    assert names is not None
    selected: dict[str, nn.Module] = {}
    for name in names:
        selected[name] = _resolve(root, name)

    by_identity: dict[int, str] = {}
    for name, module in selected.items():
        other = by_identity.setdefault(id(module), name)
        if other != name:
            raise ValueError(
                f"module {name!r} is listed twice in `modules`: it is the same module as {other!r}"
            )
    for name, module in selected.items():
        inside = {id(m): n for n, m in module.named_modules(remove_duplicate=False) if n}
        for other, other_module in selected.items():
            if other != name and id(other_module) in inside:
                raise ValueError(
                    f"`modules` lists {name!r} together with its own submodule {other!r}; list one or the"
                    f" other (the children of {name!r} that own parameters: {_fmt(candidates(root, name))})"
                )
    return selected


def _auto(root: nn.Module) -> dict[str, nn.Module]:
    prefix = ""
    while True:
        names = candidates(root, prefix)
        if len(names) != 1:
            break
        prefix = names[0]
    if not names:
        return {prefix: root.get_submodule(prefix)} if prefix else {}
    return {name: root.get_submodule(name) for name in names}


def _resolve(root: nn.Module, name: str) -> nn.Module:
    parts = name.split(".")
    module = root
    for depth, part in enumerate(parts):
        child = module._modules.get(part)
        if child is None:
            parent = ".".join(parts[:depth])
            valid = candidates(root, parent)
            close = difflib.get_close_matches(".".join(parts[: depth + 1]), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f"in {parent!r}" if parent else f"in {type(root).__name__}"
            raise ValueError(
                f"unknown module {name!r} in `modules`: {where} there is no submodule {part!r}.{hint}"
                f" Valid candidates: {_fmt(valid)}"
            )
        module = child
    return module


def _fmt(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "(none: no child owns parameters)"
