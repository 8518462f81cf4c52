"""``MosaicStrategy``: the Lightning strategy that routes a multimodal model's units through the engine.

One process per device. With one device in total it behaves like Lightning's
``SingleDeviceStrategy`` (no process group, no DDP wrapper, no distributed sampler), so the numbers
match plain Lightning exactly; with more it behaves like Lightning's ``DDPStrategy`` (gradients
all-reduced by ``DistributedDataParallel``, gloo on CPU, NCCL on GPU, launched by Lightning's
launchers and cluster environments). On top of either it selects the units, hooks them into the
engine, traces the module graph from the first step and keeps the plan in use.
"""

from __future__ import annotations

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

from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.engine import Backend, Engine, make_backend
from lightning_mosaic.engine.backends import check_backend
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.graph import ModuleGraph, trace
from lightning_mosaic.planner import Plan, concurrent_plan, device_name, temporal_plan
from lightning_mosaic.selection import check_names, select_modules

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = get_logger(__name__)
T = TypeVar("T")
START_METHODS = ("popen", "spawn", "fork", "forkserver")


class MosaicStrategy(ParallelStrategy):
    """Run a multimodal LightningModule's units (encoders, projectors, backbone) through the engine.

    Args:
        modules: the units, as dotted paths into the LightningModule (``["vision", "audio", "llm"]``,
            ``["model.vision_tower", "model.language_model"]``). ``None`` picks the LightningModule's
            children that own parameters (descending through a single wrapper child such as
            ``self.model``).
        backend: where units run: ``"auto"`` (green contexts on a GPU whose torch offers them, else
            plain CUDA streams, else inline), ``"green_context"``, ``"streams"``, ``"cpu"``,
            ``"none"`` (inline), or a :class:`~lightning_mosaic.engine.Backend` instance.
        quotas: SMs per unit on a GPU, e.g. ``{"vision": 32, "audio": 16, "llm": 84}``; units not
            listed use the whole GPU. Counts round to the hardware granularity (logged as requested
            vs granted).
        start_method: how processes start when there are several devices: ``"popen"`` (re-run the
            script, like ``strategy="ddp"``), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        process_group_backend: ``torch.distributed`` backend; default gloo on CPU, NCCL on GPU.
        timeout: process group timeout.
        **ddp_kwargs: passed to ``DistributedDataParallel`` when there are several processes
            (``find_unused_parameters``, ``static_graph``, ...).

    After the first step, ``graph`` holds the traced :class:`~lightning_mosaic.graph.ModuleGraph`
    and ``plan`` the :class:`~lightning_mosaic.planner.Plan` in use; ``engine`` routes the calls.
    """

    strategy_name = "mosaic"

    def __init__(
        self,
        modules: Sequence[str] | None = None,
        backend: str | Backend = "auto",
        quotas: dict[str, int] | None = None,
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
        self._units_key: list[tuple[str, int]] = []

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
        """A DDP comm hook: all-reduce a bucket only after every unit stream's queued work.

        DDP copies each gradient into its bucket on the stream current when the gradient is ready
        (a unit's stream in backward) and starts the all-reduce after the current stream alone, so
        the bucket could hold copies still in flight on other unit streams.
        """
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        engine = self.engine

        def hook(state: Any, bucket: Any) -> Any:
            if engine.backend.concurrent:
                current = torch.cuda.current_stream()
                for stream in engine.backend.streams.values():
                    if stream != current:
                        current.wait_stream(stream)
            return allreduce_hook(state, bucket)

        return hook

    def _device_ids(self) -> list[int] | None:
        return None if self.root_device.type == "cpu" else [self.root_device.index]

    def model_to_device(self) -> None:
        assert self.model is not None
        self.model.to(self.root_device)

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
            self.graph, self.plan = None, None  # another model or another selection: trace again
            self._units_key = key
        device = self.root_device
        backend = make_backend(self.backend, device)
        sm_count = (
            torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
        )
        quotas = check_quotas(self.quotas, list(self.units), sm_count, device_name(device))
        self.engine.attach(self.units, backend=backend, quotas=quotas, device=device)

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
            self.graph = graph
            backend = self.engine.backend
            if backend.concurrent:
                granted = {u: g.granted for u, g in backend.grants.items() if g.partitioned}
                self.plan = concurrent_plan(
                    graph, granted, self.root_device, method=f"{backend.name} backend"
                )
            else:
                self.plan = temporal_plan(graph, self.root_device)
            if self.is_global_zero:
                log.info(f"{graph.describe()}\n{self.plan.describe()}\n{backend.describe()}")
            return out

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("train", super().training_step, *args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("validate", super().validation_step, *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("test", super().test_step, *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step("predict", super().predict_step, *args, **kwargs)
