"""The units of one model and their module graph: selected, refined, traced, joined.

:class:`Units` owns which modules run as units (the selection made before any step, and its
refinement once the first traced step shows which forwards ran), the module graph traced from the
steps, and the units a step called that the graph had not seen yet (traced again while the plan is
pending). It decides nothing about plans.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.routing import RouteProbe, open_routers, stack_note
from lightning_mosaic.selection import called_units, select_modules

MAX_RETRACES = 8  # training steps traced at most after the first, for units not seen before


class Units:
    """The units of ``root`` (``names``: as given, None: chosen automatically) and their graph.

    ``selection`` is the selection made before any step, ``modules`` the units now (a refinement of
    an automatic selection may replace a unit by its parts), ``graph`` the module graph once a step
    was traced, ``unseen`` the units a step called that the graph has not seen (traced at the next
    step).
    """

    def __init__(self, root: nn.Module, names: Sequence[str] | None, refinable: bool = True) -> None:
        self.root = root
        self.selection = select_modules(root, list(names) if names is not None else None)
        self.modules: dict[str, nn.Module] = dict(self.selection)
        self.automatic = names is None
        self.reasons = {name: _why_selected(name, names is None) for name in self.selection}
        self.harmless: dict[str, list[str]] = {}  # unit -> attributes it keeps that nothing else reads
        self.refinable = refinable and self.automatic  # nothing given by hand names the units
        self.refined = False  # the automatic selection was checked against the forwards that ran
        self.graph: ModuleGraph | None = None
        self.unseen: set[str] = set()
        self.retraces = 0

    def __bool__(self) -> bool:
        return bool(self.modules)

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    @property
    def may_refine(self) -> bool:
        """Whether the next traced step may still refine the automatic selection."""
        return self.refinable and not self.refined

    @property
    def alone(self) -> set[str]:
        """Units that run alone: their data flow bypasses their outputs; all of them until traced."""
        return set(self.graph.effects) if self.graph is not None else set(self.modules)

    def graph_or_chain(self) -> ModuleGraph:
        """The traced graph, or the units with no edges when none was traced."""
        return self.graph or ModuleGraph.from_edges({name: [] for name in self.modules})

    def named(self, names: Sequence[str]) -> dict[str, nn.Module] | None:
        """The units ``names`` in the model's order: these units, or (automatic selection) the
        model's modules of those names when they refine the selection; None otherwise."""
        if set(names) == set(self.modules):
            return self.modules
        if not self.automatic:
            return None
        try:
            found = select_modules(self.root, list(names))
        except (ValueError, TypeError, AttributeError):
            return None
        selected = list(self.selection)
        refines = all(
            any(n == s or n.startswith(f"{s}.") for n in found)
            for s in selected  # no unit left out
        ) and all(any(n == s or n.startswith(f"{s}.") for s in selected) for n in found)  # nothing else
        if not refines:
            return None
        order = {id(m): i for i, m in enumerate(self.root.modules())}
        return dict(sorted(found.items(), key=lambda item: order.get(id(item[1]), len(order))))

    def take_names(self, names: Sequence[str]) -> bool:
        """Make ``names`` the units (a refined selection a profile, plan or checkpoint was made for)
        where they resolve; True if the units are now ``names``."""
        units = self.named(names)
        if units is None:
            return False
        if list(units) != list(self.modules):
            self.modules, self.refined = units, True
        return True

    def probe(self) -> RouteProbe | None:
        """A probe of the units that may route between towers, for the next traced step; None when
        the selection is not refined any more or no unit may route."""
        if not self.may_refine:
            return None
        probe = RouteProbe(self.root, self.modules)
        return probe if probe else None

    def refinement(self, ran: set[int], probe: RouteProbe | None = None) -> tuple[list[str], dict[str, str]]:
        """The units refined by a traced step (``ran``: ids of the modules whose forward ran): each
        router between towers (``probe``) replaced by its parts, each unit whose forward never ran by
        its parts that did; with why each one is a unit."""
        units, reasons = dict(self.modules), dict(self.reasons)
        if probe is not None:
            opened = open_routers(units, probe, reasons)
            units, reasons = opened.units, opened.reasons
        found = called_units(units, ran)
        for name in found:
            if name not in units:
                owner = next(u for u in units if name.startswith(f"{u}."))
                reasons[name] = f"a part of {owner!r} that ran ({owner!r} never ran its own forward)"
        return list(found), {name: reasons[name] + stack_note(name, m) for name, m in found.items()}

    def refine(self, names: Sequence[str], reasons: dict[str, str] | None = None) -> list[str]:
        """Take ``names`` (from :meth:`refinement`, as the main process found them) as the units;
        the units replaced (then the graph is traced again), none when nothing changed."""
        self.refined = True
        if reasons:
            self.reasons.update(reasons)
        if list(names) == list(self.modules):
            return []
        before = list(self.modules)
        self.take_names(names)
        self.graph = None
        return [n for n in before if n not in self.modules]

    def kept(self, harmless: dict[str, list[str]]) -> dict[str, list[str]]:
        """Take a traced step's harmless kept attributes; those not known before."""
        new = {
            u: a
            for u, attrs in harmless.items()
            if (a := [x for x in attrs if x not in self.harmless.get(u, [])])
        }
        for unit, attrs in new.items():
            self.harmless.setdefault(unit, []).extend(attrs)
        return new

    def called(self, ran: set[str]) -> set[str]:
        """Of the units a step called, those the graph has not seen run."""
        return ran - set(self.graph.called) if self.graph is not None else set()

    def retrace(self, new: set[str]) -> bool:
        """Trace the next step for ``new`` units if traces are left; False when none is."""
        if self.retraces >= MAX_RETRACES:
            return False
        self.unseen |= new
        return True

    def trace(self, graph: ModuleGraph) -> None:
        """The graph of the first traced step (of these units)."""
        self.graph = graph

    def join(self, graph: ModuleGraph) -> None:
        """A step traced for unseen units: its graph joins the one known; units still unseen (that
        step took other inputs) are traced at the next step while traces are left."""
        assert self.graph is not None
        wanted, self.unseen = self.unseen, set()
        self.retraces += 1
        self.graph = self.graph.union(graph)
        missing = wanted - set(self.graph.called)
        if missing and self.retraces < MAX_RETRACES:
            self.unseen = missing


def _why_selected(name: str, automatic: bool) -> str:
    if not automatic:
        return "named in `modules`"
    parent = name.rpartition(".")[0]
    return (
        f"a part of {parent!r} that owns parameters"
        if parent
        else "a child of the model that owns parameters"
    )


def split_changes_numbers(root: nn.Module) -> list[str]:
    """What in ``root`` makes micro-batches compute other numbers than the whole batch: BatchNorm in
    training mode (statistics per micro-batch), dropout (random masks drawn in another order)."""
    norms, drops = [], []
    for name, module in root.named_modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            norms.append(name)
        elif isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            drops.append(name)
        elif any(
            isinstance(v := getattr(module, attr, None), float) and v > 0
            for attr in ("dropout", "attention_dropout", "activation_dropout")
        ):
            drops.append(name)
    found = []
    if norms:
        found.append(
            f"BatchNorm in training mode ({_listed(norms)}): each micro-batch has its own statistics"
        )
    if drops:
        found.append(f"dropout ({_listed(drops)}): the random masks are drawn in another order")
    return found


def _listed(names: list[str], most: int = 3) -> str:
    shown = ", ".join(n or "the model itself" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
