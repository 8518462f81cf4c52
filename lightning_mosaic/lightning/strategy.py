"""``MosaicStrategy``: the Lightning strategy that routes a multimodal model's units through the engine.

One process per device. With one device in total it behaves like Lightning's
``SingleDeviceStrategy`` (no process group, no DDP wrapper, no distributed sampler), so the numbers
match plain Lightning exactly; with more it behaves like Lightning's ``DDPStrategy`` (gradients
all-reduced by ``DistributedDataParallel``, gloo on CPU, NCCL on GPU, launched by Lightning's
launchers and cluster environments). On top of either it selects the units, hooks them into the
engine, traces the module graph from the first step and runs the plan.

With ``plan="auto"`` (the default) a ``fit`` goes: warmup steps run plain (units inline) while a
:class:`~lightning_mosaic.lightning.callback.MosaicProfiler` captures and profiles each unit
(or reuses a matching profile), the performance model is fitted, the planner picks SM quotas,
phases and micro-batches, and the plan is applied from the next step on. Global rank 0 profiles
and plans; every rank applies the plan it broadcasts. The plan goes into checkpoints, so a resumed
run applies it again without profiling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
import torch.distributed
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.strategies import _StrategyRegistry
from lightning.fabric.utilities.distributed import (
    _distributed_is_initialized,
    _get_default_process_group_backend_for_device,
    _init_dist_connection,
    _sync_ddp_if_available,
)
from lightning.fabric.utilities.distributed import group as _group
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.seed import reset_seed
from lightning.fabric.utilities.types import ReduceOp
from lightning.pytorch.overrides.distributed import _sync_module_states, prepare_for_backward
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.strategies.ddp import _DDPForwardRedirection
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import _augment_message
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lightning_mosaic._files import write_text
from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.engine import Backend, Engine, make_backend
from lightning_mosaic.engine.backends import check_backend
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.graph import ModuleGraph, trace
from lightning_mosaic.lightning.callback import PROFILE_FILE, MosaicProfiler
from lightning_mosaic.lightning.lookahead import Lookahead
from lightning_mosaic.lightning.microsteps import run_micro_steps
from lightning_mosaic.pipeline import (
    check_plan_units,
    choose_plan,
    engine_arguments,
    micro_batch_cap,
    quotas_for,
    read_plan,
    set_micro_batches,
    why_inline,
)
from lightning_mosaic.planner import Plan, concurrent_plan, device_name, temporal_plan
from lightning_mosaic.selection import check_names, select_modules

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = get_logger(__name__)
T = TypeVar("T")
START_METHODS = ("popen", "spawn", "fork", "forkserver")
PLANS = ("auto", "temporal", "concurrent")
PLAN_FILE = "mosaic_plan.json"
TIMELINE_FILE = "mosaic_plan.png"
CHECKPOINT_KEY = "mosaic_plan"


class MosaicStrategy(ParallelStrategy):
    """Run a multimodal LightningModule's units (encoders, projectors, backbone) through the engine.

    Args:
        modules: the units, as dotted paths into the LightningModule (``["vision", "audio", "llm"]``,
            ``["model.vision_tower", "model.language_model"]``). ``None`` picks the LightningModule's
            children that own parameters (descending through a single wrapper child such as
            ``self.model``).
        plan: ``"auto"`` (profile during warmup, then plan; see the module docstring),
            ``"temporal"`` (every unit inline, one after another, as plain Lightning),
            ``"concurrent"`` (every unit on its own stream from the first step, under ``quotas``
            where given, no profiling), a :class:`~lightning_mosaic.planner.Plan`, or the path of a
            plan JSON file (``lightning-mosaic plan --out``).
        micro_batches: ``"auto"`` (the plan's count) or a number of micro-batches per training
            step, which overrides the plan's (also with ``plan="temporal"``).
        backend: where units run when the plan puts them side by side: ``"auto"`` (green contexts
            on a GPU whose torch offers them, else plain CUDA streams, else inline),
            ``"green_context"``, ``"streams"``, ``"cpu"`` (inline, profiled and planned with
            thread quotas: a rehearsal of the GPU pipeline), ``"none"`` (inline), or a
            :class:`~lightning_mosaic.engine.Backend` instance.
        quotas: SMs per unit on a GPU, e.g. ``{"vision": 32, "audio": 16, "llm": 84}``, for
            ``plan="concurrent"`` (implied when quotas are given); units not listed use the whole
            GPU. Counts round to the hardware granularity (logged as requested vs granted).
        profile: the profile file of ``plan="auto"`` (default ``<default_root_dir>/mosaic_profile.json``;
            a matching one is reused). A ``MosaicProfiler`` among the Trainer's callbacks is used
            instead of the strategy's own, with its settings.
        warmup_steps: plain steps before the profiled one (``plan="auto"``).
        profile_seconds: time budget of the profile (``plan="auto"``).
        start_method: how processes start when there are several devices: ``"popen"`` (re-run the
            script, like ``strategy="ddp"``), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        process_group_backend: ``torch.distributed`` backend; default gloo on CPU, NCCL on GPU.
        timeout: process group timeout.
        **ddp_kwargs: passed to ``DistributedDataParallel`` when there are several processes
            (``find_unused_parameters``, ``static_graph``, ...).

    After the first step, ``graph`` holds the traced :class:`~lightning_mosaic.graph.ModuleGraph`
    and ``plan`` the :class:`~lightning_mosaic.planner.Plan` in use (``planned`` tells whether it
    is final, i.e. no longer the provisional temporal plan of the warmup); ``engine`` routes the
    calls; ``profiler`` is the profiler of ``plan="auto"``.
    """

    strategy_name = "mosaic"

    def __init__(
        self,
        modules: Sequence[str] | None = None,
        plan: str | os.PathLike | Plan = "auto",
        micro_batches: int | str = "auto",
        backend: str | Backend = "auto",
        quotas: dict[str, int] | None = None,
        profile: str | os.PathLike | None = None,
        warmup_steps: int = 3,
        profile_seconds: float = 60.0,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
        )
        if start_method not in START_METHODS:
            raise ValueError(f"start_method={start_method!r} is not one of {', '.join(START_METHODS)}")
        self.module_names = check_names(modules)
        self.backend = check_backend(backend)
        self.quotas = check_quotas(quotas)
        self.plan_source = _check_plan(plan, bool(self.quotas))
        self.micro_batches = _check_micro_batches(micro_batches)
        self._profiler_options = dict(
            path=os.fspath(profile) if profile is not None else None,
            warmup_steps=warmup_steps,
            max_seconds=profile_seconds,
        )
        MosaicProfiler(modules, **self._profiler_options)  # checks the options now, not at fit time
        self._start_method = start_method
        self._process_group_backend = process_group_backend
        self._timeout = timeout
        self._ddp_kwargs = ddp_kwargs
        self._num_nodes = 1
        self._forward_redirection = _DDPForwardRedirection()
        self._static_graph_flushed = False
        self.engine = Engine()
        self.units: dict[str, nn.Module] = {}
        self.graph: ModuleGraph | None = None
        self.plan: Plan | None = None
        self.planned = False
        self.profiler: MosaicProfiler | None = None
        self._units_key: list[tuple[str, int]] = []
        self._checkpoint_plan: dict[str, Any] | None = None
        self._announced: Plan | None = None
        self._own_profiler = False
        self.lookahead: Lookahead | None = None

    # ------------------------------------------------------------------ placement and processes

    @property
    def root_device(self) -> torch.device:
        assert self.parallel_devices is not None
        return self.parallel_devices[self.local_rank]

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @num_nodes.setter
    def num_nodes(self, num_nodes: int) -> None:
        self._num_nodes = num_nodes

    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices) if self.parallel_devices is not None else 0

    @property
    def is_distributed(self) -> bool:
        """Several processes: gradients are all-reduced and data is sharded with a distributed sampler."""
        return self.num_nodes * self.num_processes > 1

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.num_nodes * self.num_processes, "rank": self.global_rank}

    @property
    def process_group_backend(self) -> str | None:
        return self._process_group_backend

    def _configure_launcher(self) -> None:
        if not self.is_distributed:
            self._launcher = None  # one process: run in place, like SingleDeviceStrategy
            return
        assert self.cluster_environment is not None
        if self._start_method == "popen":
            self._launcher = _SubprocessScriptLauncher(
                self.cluster_environment, self.num_processes, self.num_nodes
            )
        else:
            self._launcher = _MultiProcessingLauncher(self, start_method=self._start_method)

    def set_world_ranks(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
            self.cluster_environment.set_world_size(self.num_nodes * self.num_processes)
        rank_zero_only.rank = utils_rank_zero_only.rank = self.global_rank

    def setup_environment(self) -> None:
        super().setup_environment()
        self._install_profiler()
        if self.is_distributed:
            reset_seed()
            self.set_world_ranks()
            self._process_group_backend = (
                self._process_group_backend or _get_default_process_group_backend_for_device(self.root_device)
            )
            assert self.cluster_environment is not None
            device_id = self.root_device if self.root_device.type != "cpu" else None
            _init_dist_connection(
                self.cluster_environment,
                self._process_group_backend,
                timeout=self._timeout,
                device_id=device_id,
            )

    def setup(self, trainer: pl.Trainer) -> None:
        assert self.accelerator is not None
        assert self.model is not None
        self.accelerator.setup(trainer)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self.is_distributed and self._layer_sync:
            self.model = self._layer_sync.apply(self.model)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if fitting:
            if self.is_distributed:
                self.model = self._setup_model(self.model)
            self.setup_optimizers(trainer)
        elif self.is_distributed:
            _sync_module_states(self.model)  # no DDP wrapper outside fit: sync the weights once
        self.setup_precision_plugin()
        if fitting:
            _optimizers_to_device(self.optimizers, self.root_device)
        self._attach()

    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        device_ids = self._device_ids()
        # https://pytorch.org/docs/stable/notes/cuda.html#id5: construct DDP on a side stream
        ctx = torch.cuda.stream(torch.cuda.Stream()) if device_ids is not None else nullcontext()
        with ctx:
            ddp = DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)
        if device_ids is not None:
            ddp.register_comm_hook(state=None, hook=self._allreduce_after_units())
        return ddp

    def _allreduce_after_units(self) -> Callable[[Any, Any], Any]:
        """A DDP comm hook: all-reduce a bucket only after every unit (and lane) stream's queued work.

        DDP copies each gradient into its bucket on the stream current when the gradient is ready
        (a unit's stream in backward) and starts the all-reduce after the current stream alone, so
        the bucket could hold copies still in flight on other unit streams.
        """
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        engine = self.engine

        def hook(state: Any, bucket: Any) -> Any:
            backend = engine.backend
            if backend.concurrent:
                current = torch.cuda.current_stream()
                # Unit streams, and the lanes of micro-batch steps (code outside units may use parameters).
                for stream in [*backend.streams.values(), *getattr(backend, "lanes", {}).values()]:
                    if stream != current:
                        current.wait_stream(stream)
            return allreduce_hook(state, bucket)

        return hook

    def _device_ids(self) -> list[int] | None:
        return None if self.root_device.type == "cpu" else [self.root_device.index]

    def model_to_device(self) -> None:
        assert self.model is not None
        self.model.to(self.root_device)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        if self.plan is not None and self.planned:
            checkpoint[CHECKPOINT_KEY] = self.plan.to_dict()
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._checkpoint_plan = checkpoint.get(CHECKPOINT_KEY)
        return checkpoint

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        if not _distributed_is_initialized():
            return
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=self._device_ids())
        else:
            torch.distributed.barrier()

    def broadcast(self, obj: T, src: int = 0) -> T:
        if not _distributed_is_initialized():
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src, group=_group.WORLD)
        return box[0]

    def reduce(
        self, tensor: Tensor | Any, group: Any | None = None, reduce_op: ReduceOp | str | None = "mean"
    ) -> Tensor | Any:
        if isinstance(tensor, Tensor):
            return _sync_ddp_if_available(tensor, group, reduce_op=reduce_op)
        return tensor

    def pre_backward(self, closure_loss: Tensor) -> None:
        self.engine.before_backward(closure_loss)
        if (
            isinstance(self.model, DistributedDataParallel)
            and not self.lightning_module.automatic_optimization
        ):
            prepare_for_backward(self.model, closure_loss)

    def post_backward(self, closure_loss: Tensor) -> None:
        self.engine.join()  # before optimizer.step: the caller's stream waits for every unit stream
        # Manual optimization with ``static_graph=True``: DDP's first-iteration flush of the all-reduces.
        model = self.model
        if (
            isinstance(model, DistributedDataParallel)
            and not self.lightning_module.automatic_optimization
            and getattr(model, "static_graph", False)
            and not self._static_graph_flushed
        ):
            model.reducer._delay_all_reduce()
            self._static_graph_flushed = True

    def on_exception(self, exception: BaseException) -> None:
        _augment_message(
            exception,
            pattern=".*Expected to have finished reduction in the prior iteration.*",
            new_message=(
                "It looks like your LightningModule has parameters that were not used in producing the loss"
                " returned by training_step. If this is intentional, pass"
                " `strategy=MosaicStrategy(find_unused_parameters=True)`."
            ),
        )

    def teardown(self) -> None:
        if self.lookahead is not None:
            self.lookahead.detach()  # kept for its counts
        self.engine.detach()
        pl_module = self.lightning_module
        if isinstance(self.model, DistributedDataParallel):
            self.model = pl_module
        if (
            pl_module is not None
            and pl_module._trainer is not None
            and pl_module._trainer.state.fn == TrainerFn.FITTING
            and self.is_distributed
            and self._layer_sync
        ):
            self.model = self._layer_sync.revert(self.model)
        super().teardown()

    @classmethod
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name, start_method in (("mosaic", "popen"), ("mosaic_spawn", "spawn"), ("mosaic_fork", "fork")):
            strategy_registry.register(
                name,
                cls,
                description=f"Mosaic strategy (modules side by side on each GPU), {start_method!r} start",
                override=True,
                start_method=start_method,
            )

    # ------------------------------------------------------------------ units, graph and plan

    @property
    def active_micro_batches(self) -> int:
        """Micro-batches per training step right now (1 while the plan of ``plan="auto"`` is pending)."""
        if isinstance(self.micro_batches, int) and (self.planned or self.plan_source != "auto"):
            return self.micro_batches  # given: from the first step on, unless a profile is pending
        return self.plan.micro_batches if self.planned and self.plan is not None else 1

    def _install_profiler(self) -> None:
        """``plan="auto"`` while fitting: use the Trainer's ``MosaicProfiler``, or add the strategy's own."""
        self.profiler, self._own_profiler = None, False
        module = self.lightning_module
        trainer = getattr(module, "_trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING or self.plan_source != "auto":
            return
        if why_inline(self.backend, self.root_device) is not None:
            return  # the plan will be temporal: nothing to profile for
        for callback in trainer.callbacks:
            if isinstance(callback, MosaicProfiler):
                self.profiler = callback
                return
        self.profiler = MosaicProfiler(self.module_names, **self._profiler_options)
        self._own_profiler = True
        trainer.callbacks.append(self.profiler)

    def _attach(self) -> None:
        lightning_module = self.lightning_module
        assert lightning_module is not None
        self.units = select_modules(lightning_module, self.module_names)
        if not self.units:
            warn_once(
                log,
                f"no-units-{type(lightning_module).__name__}",
                f"{type(lightning_module).__name__} has no child module that owns parameters, so there is"
                " nothing to run side by side; mosaic trains it exactly as plain Lightning would",
            )
            return
        key = [(name, id(module)) for name, module in self.units.items()]
        if key != self._units_key:
            self.graph, self.plan, self.planned = None, None, False  # another model or selection
            self._units_key = key
        restored, self._checkpoint_plan = self._checkpoint_plan, None
        if restored is not None and self.plan_source == "auto":  # a plan given by hand wins
            self._restore(Plan.from_dict(restored))
        elif isinstance(self.plan_source, Plan) and not self.planned:
            self.plan, self.planned = Plan.from_dict(self.plan_source.to_dict()), True  # a copy per fit
        if self.planned and self.plan is not None:
            check_plan_units(self.plan, list(self.units))
            if isinstance(self.micro_batches, int):
                set_micro_batches(self.plan, self.micro_batches)
        cap = micro_batch_cap(lightning_module)
        asked = self.micro_batches if isinstance(self.micro_batches, int) else None
        if asked is None and self.planned and self.plan is not None:
            asked = self.plan.micro_batches
        if cap is not None and asked is not None and asked > cap:
            raise ValueError(
                f"{asked} micro-batches per step asked for, but {type(lightning_module).__name__} sets"
                f" mosaic_max_micro_batches = {cap} (its loss couples the samples of a batch, so splitting it"
                " would change the numbers)"
            )
        self._engage()

    def _restore(self, plan: Plan) -> None:
        """Apply the plan a checkpoint holds (unless it was made for another device)."""
        here = device_name(self.root_device)
        if plan.device != here:
            log.warning(
                f"the checkpoint's plan was made for {plan.device}, not {here}; it is not applied and the"
                f" plan is made again ({self.plan_source if isinstance(self.plan_source, str) else 'given'})"
            )
            return
        self.plan, self.planned = plan, True
        if self.profiler is not None and self._own_profiler:
            self.lightning_module.trainer.callbacks.remove(self.profiler)  # nothing left to profile
            self.profiler = None
        if self.is_global_zero:
            log.info("applying the plan from the checkpoint; not profiling or planning again")

    def _engage(self) -> None:
        """(Re)attach the engine: the plan's backend, quotas and phases, or inline while none is final."""
        if self.engine.attached:
            self.engine.detach()
        if self.lookahead is not None:
            self.lookahead.detach()
            self.lookahead = None
        device = self.root_device
        quotas: dict[str, int] = {}
        groups = None
        if self.planned and self.plan is not None:
            backend, quotas, groups = engine_arguments(self.plan, list(self.units), device, self.backend)
        elif self.plan_source == "concurrent":
            backend = make_backend(self.backend, device)
            quotas = quotas_for(self.quotas, list(self.units), device)
        else:  # warmup of plan="auto", or plan="temporal": plain
            backend = make_backend("none", device)
        self.engine.attach(self.units, backend=backend, quotas=quotas, device=device, groups=groups)
        if self.planned and self.plan is not None and self.plan.lookahead:
            self.lookahead = Lookahead(self.units, self.plan.lookahead, self.engine)
            self.lookahead.attach()

    def _should_trace(self, stage: str) -> bool:
        if self.graph is not None or not self.units:
            return False
        trainer = self.lightning_module.trainer
        # While fitting, trace a training step (the sanity check's validation steps come first).
        return stage == "train" or trainer.state.fn != TrainerFn.FITTING

    def _run_step(self, stage: str, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.engine.step():
            if not self._should_trace(stage):
                return step(*args, **kwargs)
            graph, out = trace(self.units, lambda: step(*args, **kwargs))
        self._traced(graph)
        return out

    def _traced(self, graph: ModuleGraph) -> None:
        """The first step's graph is known: fix the plan of sources that need no profile."""
        self.graph = graph
        device = self.root_device
        source = self.plan_source
        if not self.planned:
            if source == "concurrent":
                backend = self.engine.backend
                granted = {u: g.granted for u, g in backend.grants.items() if g.partitioned}
                self.plan = concurrent_plan(graph, granted, device, method=f"{backend.name} backend")
                self.planned = True
            elif source == "temporal" or self.profiler is None:
                self.plan = temporal_plan(graph, device)
                if source == "auto":
                    reason = why_inline(self.backend, self.root_device) or "nothing is profiled outside fit"
                    self.plan.notes.append(f"{reason}: temporal plan")
                self.planned = True
            else:
                self.plan = temporal_plan(graph, device)  # provisional: the warmup runs plain
        if self.planned and self.plan is not None and isinstance(self.micro_batches, int):
            set_micro_batches(self.plan, self.micro_batches)
        if self.is_global_zero:
            pending = (
                f"\nplan: auto; the first {self.profiler.warmup_steps} steps run plain, then the units"
                " are profiled and planned"
                if not self.planned and self.profiler is not None
                else ""
            )
            log.info(f"{graph.describe()}{pending}")
        self._announce(graph)

    def _announce(self, graph: ModuleGraph | None) -> None:
        """Log the final plan and the backend once; write the plan files of ``plan="auto"`` (fitting)."""
        if not self.planned or self.plan is None or self._announced is self.plan:
            return
        self._announced = self.plan
        if self.is_global_zero:
            log.info(f"{self.plan.describe()}\n{self.engine.backend.describe()}")
        if self._fitting() and self.profiler is not None:
            self._publish(graph)

    def _fitting(self) -> bool:
        trainer = self.lightning_module.trainer
        return trainer.state.fn == TrainerFn.FITTING

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        profiler = self.profiler
        if self.planned or profiler is None or profiler.profile is None:
            self._look_ahead(batch, batch_idx)
            return
        graph = self.graph
        if graph is None and profiler.profile.graph is not None:
            graph = ModuleGraph.from_dict(profiler.profile.graph)
        if graph is None:
            self._look_ahead(batch, batch_idx)
            return  # the first step traces it
        data = None
        if self.is_global_zero:
            data = self._search(profiler, graph).to_dict()
        data = self.broadcast(data, src=0)
        self.plan, self.planned = Plan.from_dict(data), True
        self._engage()
        self._announce(graph)
        self._look_ahead(batch, batch_idx)

    def _look_ahead(self, batch: Any, batch_idx: int) -> None:
        if self.lookahead is not None:
            self.lookahead.step(self.lightning_module.trainer, batch, batch_idx)

    def _search(self, profiler: MosaicProfiler, graph: ModuleGraph) -> Plan:
        """The plan for ``graph`` from the profiler's performance model (rank 0); temporal when none fits."""
        assert profiler.profile is not None
        return choose_plan(
            graph,
            profiler.perf_model,
            self.root_device,
            profiler.profile.batch_size,
            micro_batches=self.micro_batches if isinstance(self.micro_batches, int) else None,
            max_micro_batches=micro_batch_cap(self.lightning_module),
        )

    def _publish(self, graph: ModuleGraph | None = None) -> None:
        """Write the plan (and the profile and the timeline, when there is one) to the logger's directory."""
        directory = self.lightning_module.trainer.log_dir  # every rank: it broadcasts
        if not self.is_global_zero or directory is None or self.plan is None:
            return
        self.plan.save(os.path.join(directory, PLAN_FILE))
        written = [PLAN_FILE]
        profiler = self.profiler
        if profiler is not None and profiler.profile is not None:
            target = os.path.join(directory, PROFILE_FILE)
            if os.path.abspath(target) != os.path.abspath(profiler.path or ""):
                write_text(target, profiler.profile.to_json())
            written.append(PROFILE_FILE)
            if profiler.perf_model is not None and graph is not None:
                from lightning_mosaic.viz import draw_plan

                try:
                    draw_plan(
                        graph,
                        profiler.perf_model,
                        self.plan,
                        profiler.profile.batch_size,
                        os.path.join(directory, TIMELINE_FILE),
                    )
                    written.append(TIMELINE_FILE)
                except ImportError as err:
                    warn_once(log, "plan-timeline", f"the plan's timeline is not drawn: {err}")
        log.info(f"{', '.join(written)} written to {directory}")

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        k = self.active_micro_batches
        try:
            if k <= 1 or not args:
                return self._run_step("train", super().training_step, *args, **kwargs)
            return self._run_step("train", self._micro_training_step, k, *args, **kwargs)
        finally:
            if self.lookahead is not None:
                self.lookahead.end_step()

    def _micro_training_step(self, k: int, *args: Any, **kwargs: Any) -> Any:
        """``training_step`` on ``k`` micro-batches, inside one forward of the DDP wrapper if there is one."""
        module = self.lightning_module

        def steps(batch: Any, *rest: Any, **kw: Any) -> Any:
            return run_micro_steps(module, module.training_step, k, self.engine, batch, *rest, **kw)

        with self.precision_plugin.train_step_context():
            if self.model is module:
                return steps(*args, **kwargs)
            module.__dict__[_MICRO_STEPS] = steps  # what the DDP forward redirection calls
            try:
                return self._forward_redirection(self.model, module, _MICRO_STEPS, *args, **kwargs)
            finally:
                del module.__dict__[_MICRO_STEPS]

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("validate", super().validation_step, *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("test", super().test_step, *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("predict", super().predict_step, *args, **kwargs)


_MICRO_STEPS = "_mosaic_micro_steps"


def _check_plan(plan: Any, quotas_given: bool) -> str | Plan:
    """``plan`` as ``"auto"``, ``"temporal"``, ``"concurrent"`` or a :class:`Plan` (a path is read now)."""
    source = read_plan(plan, PLANS)
    if quotas_given:
        if source == "auto":
            return "concurrent"  # quotas by hand are a plan by hand
        if source != "concurrent":
            raise ValueError(
                f"quotas= sets the SM quotas by hand, which only goes with plan='concurrent', not"
                f" plan={plan!r}; put the quotas in the plan instead"
            )
    return source


def _check_micro_batches(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(
        f"micro_batches={value!r} must be 'auto' (the plan's count) or a whole number, 1 or more"
    )
