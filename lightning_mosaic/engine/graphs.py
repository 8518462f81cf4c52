"""Per-unit CUDA graphs: capture a unit's forward and backward once, replay each as one launch.

A small encoder at a training batch size is bound by the one Python thread that issues its
hundreds of kernels: a quota or a stream of its own does not make it faster. Captured as CUDA
graphs, each pass costs the host one replay. :class:`GraphRunner` does that for the units a plan
lists (``Plan.graphs``) with PyTorch's own capture (``torch.cuda.CUDAGraph``, as
``torch.cuda.make_graphed_callables`` uses it), replacing the unit's ``forward`` on the instance
(never a wrapper module: ``state_dict`` keys stay; :meth:`GraphRunner.detach` restores it).

One call of a graphed unit in a training step:

1. its :func:`~lightning_mosaic.engine.graphable.signature` (input shapes, grad and autocast mode,
   ...) and its position among the unit's calls in this step pick a graph; a call with no graph
   yet captures one: the unit runs eagerly :data:`WARMUP` times under a
   :class:`~lightning_mosaic.engine.graphable.Scan` (buffers such as BatchNorm's running
   statistics and the RNG state are put back afterwards, so the run's numbers do not change),
   then its forward — and its backward, when anything needs gradients — are captured on the
   current stream (the unit's own, inside its green context, under the engine), in a memory
   pool of that graph. Each position has its own graphs: with micro-batches, or several calls
   per step, the forwards replayed before the first backward keep their activations apart.
2. the inputs are copied into the graph's static inputs, the forward graph replays, and the
   outputs are returned as fresh copies (a later replay cannot overwrite what the caller holds).
3. backward (an autograd function): the incoming gradients are copied in, the backward graph
   replays, and the gradients of the inputs and the trainable parameters are returned. Autograd
   accumulates the parameters' gradients as it would after an eager backward, so gradient
   accumulation, DDP's hooks and ``register_post_accumulate_grad_hook`` see them as usual (the
   graph's own gradient tensors are never handed over as ``.grad``: the next replay rewrites them).

Parameters are captured through aliases that share their memory, so an optimizer's in-place
update is seen by the next replay and no hook on a parameter fires during warmup or capture; a
parameter whose memory moved (reassigned) makes its graphs captured again.

What is never captured, each said once in the log, the unit then running eagerly: what the scan
finds; submodules with hooks; units with sharded (FSDP2) parameters; outputs holding objects
compared by identity (a cache), which a replay would hand out as captured; arguments that cannot be
compared between calls; more than :data:`MAX_GRAPHS` graphs for one unit (its input shapes keep
changing); a capture that fails.
Calls outside training steps (validation, prediction, the profiler's replays) always run eagerly.

``CudaCapture`` captures on a GPU; :class:`EmulatedCapture` stands in on a CPU for tests: its
"graph" runs the captured function again on replay and writes the results into the tensors the
capture returned, so static memory behaves as on a GPU (an output kept past the next replay, or a
gradient handed over as ``.grad``, would change).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from types import MethodType
from typing import Any, Protocol

import torch
from torch import nn

from lightning_mosaic._compile import eager_while_watched, how_compiled, replays_cuda_graphs
from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic._tree import iter_tensors, map_tensors
from lightning_mosaic.engine.graphable import (
    Scan,
    autocast_state,
    describe_inputs,
    first,
    hooked_parts,
    opaque_leaf,
    put_back,
    sharded,
    signature,
)

log = get_logger(__name__)

WARMUP = 2  # eager runs before a capture: lazy initialisation (cuBLAS handles, workspaces) happens here
MAX_GRAPHS = 8  # per unit (positions x signatures); past it the unit runs eagerly
CHOICES = ("auto", True, False)


def check_graphs(value: Any) -> str | bool:
    """``graphs=`` checked: ``"auto"``, ``True`` or ``False``."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(
        f"graphs={value!r} is not one of 'auto' (units the profile shows to be launch-bound), True"
        " (every unit that can be captured) or False (none)"
    )


class Ineligible(Exception):
    """A unit's call cannot be captured; ``reasons`` say why."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(first(reasons))
        self.reasons = reasons


# ---------------------------------------------------------------------- how graphs are made


class Capture(Protocol):
    """How graphs are captured and replayed on one device."""

    name: str

    def pool(self) -> Any: ...  # a memory pool handle for one call's graphs

    def warmup(self) -> Any: ...  # a context where the eager warmup runs

    def capture(self, fn: Callable[[], list], pool: Any) -> tuple[Any, list]: ...  # (graph, static results)

    def get_rng_state(self) -> torch.Tensor: ...

    def set_rng_state(self, state: torch.Tensor) -> None: ...

    def allocated(self) -> int: ...  # bytes allocated on the device now


class CudaCapture:
    """``torch.cuda.CUDAGraph`` captured on the current stream (a side stream when that is the
    default stream, which cannot capture); warmup on a side stream, as PyTorch recommends."""

    name = "cuda"

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    @contextmanager
    def warmup(self) -> Iterator[None]:
        caller = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            yield
        caller.wait_stream(side)

    def capture(self, fn: Callable[[], list], pool: Any) -> tuple[Any, list]:
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.device)
        stream = None if current == torch.cuda.default_stream(self.device) else current
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            result = fn()
        return graph, result

    def get_rng_state(self) -> torch.Tensor:
        return torch.cuda.get_rng_state(self.device)

    def set_rng_state(self, state: torch.Tensor) -> None:
        torch.cuda.set_rng_state(state, self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)


class _Rerun:
    """An emulated graph: replaying runs ``fn`` again and writes its results into the static ones."""

    def __init__(self, fn: Callable[[], list], static: list) -> None:
        self.fn = fn
        self.static = [t.detach() if isinstance(t, torch.Tensor) else None for t in static]
        self.replays = 0

    def replay(self) -> None:
        fresh = self.fn()
        with torch.no_grad():
            for old, new in zip(self.static, fresh, strict=True):
                if old is not None and new is not None:
                    old.copy_(new)
        self.replays += 1


class EmulatedCapture:
    """A CPU stand-in for tests (see the module docstring); counts captures and replays."""

    name = "emulated"

    def __init__(self) -> None:
        self.graphs: list[_Rerun] = []

    def pool(self) -> Any:
        return None

    def warmup(self) -> Any:
        return nullcontext()

    def capture(self, fn: Callable[[], list], pool: Any) -> tuple[Any, list]:
        result = fn()
        graph = _Rerun(fn, result)
        self.graphs.append(graph)
        return graph, result

    def get_rng_state(self) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)

    def allocated(self) -> int:
        return 0


def capture_for(device: torch.device) -> Capture | None:
    """The capture for ``device``: CUDA graphs on a CUDA device, none elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return CudaCapture(device)
    return None


# ---------------------------------------------------------------------- one captured call


@contextmanager
def _swapped(module: nn.Module, aliases: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Every parameter of ``module`` whose id is in ``aliases`` replaced by its alias (tied ones too)."""
    changed: list[tuple[dict, str, Any]] = []
    for part in module.modules():
        for key, value in part._parameters.items():
            if value is not None and id(value) in aliases:
                changed.append((part._parameters, key, value))
                part._parameters[key] = aliases[id(value)]
    try:
        yield
    finally:
        for table, key, value in changed:
            table[key] = value


class GraphedCall:
    """The graphs of one call position and signature of one unit (see the module docstring)."""

    def __init__(
        self, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict, capture: Capture
    ) -> None:
        how = how_compiled(module)
        if how is not None:  # the runner's units and the profiler's alike: the user's compiled code stands
            why = (
                "replays CUDA graphs of its own (compiled with mode='reduce-overhead')"
                if replays_cuda_graphs(module)
                else "runs its compiled code (compile it with mode='reduce-overhead' for CUDA graphs)"
            )
            raise Ineligible([f"is compiled ({how}) and {why}"])
        self.capture = capture
        self.template = (args, kwargs)
        grad = torch.is_grad_enabled()
        device_type = device_type_of(module, args, kwargs)
        enabled, dtype = autocast_state(device_type)
        self._autocast = (
            (lambda: torch.autocast(device_type, dtype=dtype, cache_enabled=False))
            if enabled
            else nullcontext
        )
        self.inputs = [
            _plain(t).detach().clone().requires_grad_(t.requires_grad and grad)
            for t in iter_tensors((args, kwargs))
        ]
        self.params = [p for p in module.parameters() if p.requires_grad] if grad else []
        self.slots = _slots(module)
        aliases = {id(p): p.detach().requires_grad_(True) for p in self.params}
        self.surface = [t for t in self.inputs if t.requires_grad] + list(aliases.values())
        self._module, self._forward, self._aliases, self._grad = module, forward, aliases, grad
        self.live: list = []
        self.rng = False
        buffers = [b for b in module.buffers()]
        saved = [b.detach().clone() for b in buffers]
        rng = capture.get_rng_state()
        before = capture.allocated()
        scan = Scan()
        try:
            with capture.warmup():
                for i in range(WARMUP):
                    with (
                        eager_while_watched() if i == 0 else nullcontext(),
                        scan if i == 0 else nullcontext(),
                    ):
                        outs = self._run()
                        self._grads(outs, [torch.zeros_like(o) for o in outs if _needs(o)])
                    if scan.reasons:
                        raise Ineligible(list(scan.reasons))
                    del outs
                self.live, self._out = [], None  # the warmup's activations are freed before the capture
            self.rng = scan.rng
            pool = capture.pool()
            self.fwd, static = capture.capture(self._run, pool)
            self.outputs = [o.detach() if isinstance(o, torch.Tensor) else o for o in static]
            self.needs = [_needs(o) for o in static]
            self.structure = self._out
            opaque = opaque_leaf(self.structure)
            if opaque is not None:
                raise Ineligible(
                    [f"returns a {opaque} object, which a replay would hand out as it was captured"]
                )
            self.bwd = None
            self.grad_outputs: list = []
            self.grads: list = []
            if self.surface and any(self.needs):
                wanted = zip(self.outputs, self.needs, strict=True)
                self.grad_outputs = [torch.empty_like(o) for o, n in wanted if n]
                self.bwd, grads = capture.capture(lambda: self._grads(self.live, self.grad_outputs), pool)
                self.grads = [g.detach() if g is not None else None for g in grads]
            self.bytes = capture.allocated() - before
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved, strict=True):
                    buffer.data.copy_(value)  # not a new version: earlier calls' backward saved it
            capture.set_rng_state(rng)
            put_back(scan)
        del self._out

    def _run(self) -> list:
        """The unit's forward on the static inputs (parameters through their aliases), flattened."""
        tensors = iter(self.inputs)
        args, kwargs = map_tensors(lambda _: next(tensors), self.template)
        with _swapped(self._module, self._aliases), torch.set_grad_enabled(self._grad), self._autocast():
            out = self._forward(*args, **kwargs)
        self._out = out
        self.live = list(iter_tensors(out))
        return self.live

    def _grads(self, outs: list, grad_outputs: list) -> list:
        """Gradients of the surface (grad-requiring inputs, then trainable parameters)."""
        needed = [o for o in outs if _needs(o)]
        if not self.surface or not needed:
            return []
        return list(torch.autograd.grad(needed, self.surface, grad_outputs, allow_unused=True))

    @property
    def backward(self) -> bool:
        return self.bwd is not None

    def valid(self) -> bool:
        """The unit's parameters and buffers are the tensors captured, in the same memory, with the
        same ``requires_grad`` (the graph reads that memory and differentiates those)."""
        return all(
            table.get(key) is tensor and tensor.data_ptr() == pointer and tensor.requires_grad == wanted
            for table, key, tensor, pointer, wanted in self.slots
        )

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        tensors = list(iter_tensors((args, kwargs)))
        if self.bwd is not None:
            outs = _Replay.apply(self, *tensors, *self.params)
        else:
            with torch.no_grad():
                outs = self.replay_forward(tensors)
        it = iter(outs)
        return map_tensors(lambda _: next(it), self.structure)

    def replay_forward(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, real in zip(self.inputs, tensors, strict=True):
            if static.data_ptr() != real.data_ptr():
                static.detach().copy_(real)
        self.fwd.replay()
        return tuple(o.clone() for o in self.outputs)

    def replay_backward(self, grads: tuple) -> list:
        given = [g for g, n in zip(grads, self.needs, strict=True) if n]
        for static, grad in zip(self.grad_outputs, given, strict=True):
            if grad is None:
                static.zero_()
            elif static.data_ptr() != grad.data_ptr():
                static.copy_(grad)
        self.bwd.replay()
        return self.grads


def _slots(module: nn.Module) -> list[tuple[dict, str, torch.Tensor, int, bool]]:
    """Every parameter and buffer of ``module``: where it is held, the tensor, its memory and
    ``requires_grad``, to check cheaply at each call that nothing was replaced."""
    found = []
    for part in module.modules():
        for table in (part._parameters, part._buffers):
            for key, tensor in table.items():
                if tensor is not None:
                    found.append((table, key, tensor, tensor.data_ptr(), tensor.requires_grad))
    return found


def device_type_of(module: nn.Module, args: tuple, kwargs: dict) -> str:
    """Where a call runs: its first input tensor's device, else its first parameter's (else CPU)."""
    if args and type(args[0]) is torch.Tensor:
        return args[0].device.type
    first_tensor = next(iter_tensors((args, kwargs)), None)
    if first_tensor is None:
        first_tensor = next(module.parameters(), None)
    return first_tensor.device.type if first_tensor is not None else "cpu"


def _needs(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.requires_grad


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if type(tensor) is torch.Tensor else tensor.as_subclass(torch.Tensor)


class _Replay(torch.autograd.Function):
    """Forward: replay the forward graph. Backward: replay the backward graph."""

    @staticmethod
    def forward(ctx: Any, graphed: GraphedCall, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.graphed = graphed
        ctx.inputs = len(graphed.inputs)
        outs = graphed.replay_forward(list(tensors[: ctx.inputs]))
        ctx.mark_non_differentiable(*(o for o, n in zip(outs, graphed.needs, strict=True) if not n))
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        graphed: GraphedCall = ctx.graphed
        computed = iter(graphed.replay_backward(grads))
        # The surface is the grad-requiring inputs, then the parameters: hand each its gradient. The
        # graph's own tensors are returned (never stolen as .grad: this object still holds them).
        inputs = [next(computed) if t.requires_grad else None for t in graphed.inputs]
        params = [next(computed) for _ in graphed.params]
        return (None, *inputs, *params)


# ---------------------------------------------------------------------- the units' graphs


class _Forward:
    """The forward a graphed unit gets on its instance. A copy of the unit (``copy.deepcopy``,
    pickle) gets the forward it had before instead: copies run eagerly, outside this run's graphs."""

    __slots__ = ("call", "module", "own")

    def __init__(self, call: Callable[..., Any], module: nn.Module, own: Any) -> None:
        self.call, self.module, self.own = call, module, own

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        copy = memo.get(id(self.module), self.module)
        if self.own is not None:
            return deepcopy(self.own, memo)
        return _class_forward(copy)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.own is not None:
            return (_same, (self.own,))
        return (_class_forward, (self.module,))


def _same(obj: Any) -> Any:
    return obj


def _class_forward(module: nn.Module) -> Any:
    return MethodType(type(module).forward, module)


class GraphRunner:
    """Replaces the forward of each graphed unit (on the instance) by a graph replay; see the module
    docstring. ``active()`` says whether a call happens in a training step now."""

    def __init__(self, capture: Capture, max_graphs: int = MAX_GRAPHS) -> None:
        self.capture = capture
        self.max_graphs = max_graphs
        self.modules: dict[str, nn.Module] = {}
        self.graphs: dict[str, dict[tuple, GraphedCall]] = {}
        self.dropped: dict[str, str] = {}  # unit -> why it runs eagerly
        self.captures: dict[str, int] = {}
        self._own: dict[str, Any] = {}  # unit -> the instance forward it had before (None: its class's)
        self._position: dict[str, int] = {}
        self.active: Callable[[], bool] = lambda: True

    def attach(self, units: Mapping[str, nn.Module], active: Callable[[], bool] | None = None) -> None:
        """Graph ``units`` (name -> module) from their next call in a training step."""
        if self.modules:
            raise RuntimeError(f"graphs are already attached to {list(self.modules)}; call detach() first")
        if active is not None:
            self.active = active
        for name, module in units.items():
            if sharded(module):
                self._drop(name, "holds sharded parameters (FSDP2), gathered anew at every call")
                continue
            hooked = hooked_parts(module)
            if hooked:
                self._drop(name, f"has hooks on its parts {first(hooked)}, which a replay would not run")
                continue
            self.modules[name] = module
            self.graphs[name] = {}
            own = module.__dict__.get("forward")
            self._own[name] = own
            module.forward = _Forward(self._call(name, module, module.forward), module, own)

    def detach(self) -> None:
        """Give every unit its own forward back and free the graphs."""
        for name, module in self.modules.items():
            own = self._own.get(name)
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own
        self.modules, self.graphs, self._own = {}, {}, {}
        self._position.clear()

    def new_step(self) -> None:
        """A step begins: each unit's next call is its first of the step."""
        self._position.clear()

    def describe(self) -> str:
        """One line per unit: graphs captured, replays, or why it runs eagerly."""
        lines = []
        for name, graphs in self.graphs.items():
            if name in self.dropped:
                continue
            passes = "forward and backward" if any(g.backward for g in graphs.values()) else "forward"
            pool = sum(g.bytes for g in graphs.values())
            lines.append(f"  {name}: {len(graphs)} graph(s) of its {passes}, pools {pool / 2**20:.1f} MiB")
        lines.extend(f"  {name}: eager ({why})" for name, why in self.dropped.items())
        return "\n".join(["CUDA graphs (" + self.capture.name + "):", *lines])

    def _drop(self, name: str, why: str) -> None:
        if name in self.dropped:
            return
        self.dropped[name] = why
        self.graphs[name] = {}  # frees its graphs
        message = f"unit {name} is not captured as a CUDA graph: it {why}; it runs eagerly"
        warn_once(log, f"graphs-{name}-{why}", message)

    def _call(self, name: str, module: nn.Module, eager: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if name in self.dropped or not self.active():
                return eager(*args, **kwargs)
            position = self._position.get(name, 0)
            self._position[name] = position + 1
            graphs = self.graphs[name]
            key = signature(module, args, kwargs, device_type_of(module, args, kwargs))
            if key is None:
                self._drop(name, "takes an argument that cannot be compared between calls (no == by value)")
                return eager(*args, **kwargs)
            key = (position, key)
            graphed = graphs.get(key)
            if graphed is not None and not graphed.valid():
                log.info(f"unit {name}: its parameters or buffers were replaced or moved; captured again")
                del graphs[key]
                graphed = None
            if graphed is None:
                if len(graphs) >= self.max_graphs:
                    self._drop(
                        name,
                        f"would need more than {self.max_graphs} graphs (its input shapes, or its calls per"
                        f" step, keep changing: now {describe_inputs(args, kwargs)})",
                    )
                    return eager(*args, **kwargs)
                try:
                    graphed = GraphedCall(module, eager, args, kwargs, self.capture)
                except Ineligible as err:
                    self._drop(name, first(err.reasons))
                    return eager(*args, **kwargs)
                except Exception as err:  # a capture PyTorch refused: the unit stays eager
                    self._drop(name, f"failed to capture ({type(err).__name__}: {err})")
                    return eager(*args, **kwargs)
                graphs[key] = graphed
                self.captures[name] = self.captures.get(name, 0) + 1
                if log.isEnabledFor(logging.INFO):
                    log.info(
                        f"unit {name}: captured a CUDA graph of its"
                        f" {'forward and backward' if graphed.backward else 'forward'}"
                        f" (call {position + 1} of the step, inputs {describe_inputs(args, kwargs)}"
                        f"{', graph-safe RNG' if graphed.rng else ''}); {len(graphs)} graph(s) now"
                    )
            return graphed(args, kwargs)

        return forward
