"""``MosaicStrategy``: each model's units run through a mosaic session, on one device or under DDP.

One process in total: the strategy *is* a ``SingleDeviceStrategy`` — no launcher, no process group,
no wrapper, no distributed sampler — so Lightning treats the run as single-device training (the
batch-size and learning-rate tuners, prediction writers, samplers) and the numbers are those of
plain Lightning. Several processes (devices or nodes): it *is* a ``DDPStrategy``, unchanged —
launchers, cluster environments, a process group, the ``DistributedDataParallel`` wrapper while
fitting — with one addition on a GPU: each gradient bucket's all-reduce waits for the units'
streams; with ``shard=``, FSDP2 replaces the wrapper. Lightning knows "distributed" by a strategy's
class, and the number of processes is known only once the Trainer has given the strategy its
devices (``_configure_launcher``), so the strategy takes its class then: a subclass of the class the
user made (``MosaicStrategy`` or a subclass of it) and of the Lightning strategy it is
(:func:`_shaped`). ``isinstance(strategy, MosaicStrategy)`` holds either way.

On top of either, ``setup()`` starts a :class:`~lightning_mosaic.session.Session` for the
LightningModule (its units, the engine, the profile, the plan) and the strategy's hooks tell it
where the loop is: every step call runs inside ``session.step()``, each training batch start calls
``session.before_step()`` (where, with ``plan="auto"``, the warmup ends, a step is captured, then
profiled, planned and applied), the end of training ``session.finish()``. Global rank 0 profiles
and plans; every rank applies the plan it broadcasts. The session's plan and profile go into
checkpoints, so a resumed run applies the plan again without profiling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.strategies import _StrategyRegistry
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor, nn
from typing_extensions import override

from lightning_mosaic._logging import get_logger
from lightning_mosaic.engine import Backend, Engine
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.lightning import sharded
from lightning_mosaic.lightning.callback import LIGHTNING_WORDS, MosaicProfiler
from lightning_mosaic.lightning.lookahead import Lookahead
from lightning_mosaic.lightning.microsteps import run_micro_steps
from lightning_mosaic.plan import Plan
from lightning_mosaic.selection import select_modules
from lightning_mosaic.session import ProfileSettings, Session, SessionConfig
from lightning_mosaic.sharding import REPLICATED, Layout, check_shard, resident_bytes

if TYPE_CHECKING:
    import lightning.pytorch as pl

T = TypeVar("T")
START_METHODS = ("popen", "spawn", "fork", "forkserver")
CHECKPOINT_KEY = "mosaic"
_MICRO_STEPS = "_mosaic_micro_steps"
log = get_logger(__name__)


class _NoGradientSync:
    """Gradient accumulation under FSDP2: no reduce-scatter / all-reduce until the last micro-step."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(False)

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(True)


class MosaicStrategy(Strategy):
    """Run a multimodal LightningModule's units (encoders, projectors, backbone) side by side.

    Args:
        modules: the units, as dotted paths into the LightningModule (``["vision", "audio", "llm"]``,
            ``["model.vision_tower", "model.language_model"]``). ``None`` picks the LightningModule's
            children that own parameters (descending through a single wrapper child such as
            ``self.model``), or the modules of a ``MosaicProfiler`` among the callbacks.
        plan: ``"auto"`` (profile during warmup, then plan; see the module docstring),
            ``"temporal"`` (every unit inline, one after another, as plain Lightning),
            ``"concurrent"`` (every unit on its own stream from the first step, under ``quotas``
            where given, no profiling), a :class:`~lightning_mosaic.plan.Plan`, or the path of a
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
            a matching one is reused). A ``MosaicProfiler`` among the Trainer's callbacks gives its
            settings (file, warmup, grid) instead, and asks for a profile even where the plan will
            not use it.
        warmup_steps: plain steps before the profiled one (``plan="auto"``).
        profile_seconds: time budget of the profile (``plan="auto"``).
        shard: with several processes, the units to shard with FSDP2 (``["llm"]``), ``"auto"`` (the
            largest units until the training state per rank fits half the device memory) or ``None``
            (every unit replicated under DDP). Sharded units are ``fully_shard``-ed per transformer
            block; the others and the rest of the model are replicated on a ``(world, 1)`` mesh.
            Checkpoints then go through ``torch.distributed.checkpoint`` as under Lightning's
            ``ModelParallelStrategy``, and the units are not profiled (the plan is temporal unless given).
        save_distributed_checkpoint: with ``shard``, a sharded checkpoint directory (default) or, with
            False, one full file that plain Lightning loads.
        mp_policy: with ``shard``, FSDP2's ``MixedPrecisionPolicy`` for every unit (default: none;
            the precision plugin's autocast applies as usual).
        graphs: per-unit CUDA graphs on a GPU: ``"auto"`` captures the units the profile shows to be
            launch-bound (host time at least device time), ``True`` every unit, ``False`` none. A
            graphed unit's forward and backward replay as one launch each in training steps, on its
            stream and quota; units that cannot be captured (host syncs, data-dependent shapes, ...)
            run eagerly, said once in the log. Needs a CUDA device (elsewhere the units run eagerly).
        start_method: how processes start when there are several devices: ``"popen"`` (re-run the
            script, like ``strategy="ddp"``), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        process_group_backend: ``torch.distributed`` backend; default gloo on CPU, NCCL on GPU.
        timeout: process group timeout.
        **ddp_kwargs: what ``DDPStrategy`` takes besides (``ddp_comm_hook``, ``find_unused_parameters``,
            ``static_graph``, ...).

    ``config`` is the session configuration these arguments make (checked here, once);
    ``session`` the :class:`~lightning_mosaic.session.Session` of the model being trained (None
    before ``setup``); ``units``, ``engine``, ``graph``, ``plan``, ``planned`` and
    ``active_micro_batches`` read it. On one process the strategy is a ``SingleDeviceStrategy``,
    on several a ``DDPStrategy`` (see the module docstring).
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
        shard: str | Sequence[str] | None = None,
        save_distributed_checkpoint: bool = True,
        mp_policy: Any = None,
        graphs: str | bool = "auto",
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
        if start_method not in START_METHODS:
            raise ValueError(f"start_method={start_method!r} is not one of {', '.join(START_METHODS)}")
        if timeout is not None and not isinstance(timeout, timedelta):
            raise TypeError(
                f"timeout={timeout!r} must be a datetime.timedelta (e.g. timedelta(minutes=30)) or None"
            )
        if process_group_backend is not None and not isinstance(process_group_backend, str):
            raise TypeError(f"process_group_backend={process_group_backend!r} must be a backend name or None")
        if not _is_shape(type(self)):
            # Made as a DDP strategy (it holds every setting); one process makes it single-device later.
            self.__class__ = _shaped(type(self), DDPStrategy)
        super().__init__(  # DDPStrategy's
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
            **ddp_kwargs,
        )
        self.config = SessionConfig(
            modules=modules,
            plan=plan,
            backend=backend,
            quotas=quotas or {},
            micro_batches=micro_batches,
            graphs=graphs,
            profile=ProfileSettings(path=profile, warmup_steps=warmup_steps, max_seconds=profile_seconds),
            words=LIGHTNING_WORDS,
        )
        self.shard = check_shard(shard)
        if self.shard is not None and start_method != "popen":
            raise ValueError(
                f"shard={shard!r} needs start_method='popen' (as Lightning's ModelParallelStrategy), not"
                f" {start_method!r}: spawned processes hand the trained weights back whole, and sharded"
                " units hold a shard on each rank"
            )
        if not isinstance(save_distributed_checkpoint, bool):
            raise TypeError(
                f"save_distributed_checkpoint={save_distributed_checkpoint!r} must be True or False"
            )
        self._save_distributed_checkpoint = save_distributed_checkpoint
        if mp_policy is not None:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            if not isinstance(mp_policy, MixedPrecisionPolicy):
                raise TypeError(
                    f"mp_policy={mp_policy!r} must be a torch.distributed.fsdp.MixedPrecisionPolicy"
                )
        self.mp_policy = mp_policy
        self.layout: Layout | None = None  # the units' parallel layout once sharded
        self.session: Session | None = None
        self.lookahead: Lookahead | None = None
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ one process, or DDP

    @property
    def module_names(self) -> list[str] | None:
        return list(self.config.modules) if self.config.modules is not None else None

    # DDPStrategy's settings, kept while the strategy is single-device (a later Trainer may change them)

    @property
    def parallel_devices(self) -> list[torch.device] | None:
        return self._parallel_devices

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device] | None) -> None:
        self._parallel_devices = devices

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @num_nodes.setter
    def num_nodes(self, num_nodes: int) -> None:
        self._num_nodes = num_nodes

    @property
    def is_distributed(self) -> bool:
        """Several processes: gradients are all-reduced and data is sharded with a distributed sampler."""
        return self._num_nodes * len(self.parallel_devices or ()) > 1

    def set_world_ranks(self) -> None:  # DDPStrategy's, with several processes
        # One process keeps the ranks plain Lightning gives a single device (rank_zero_only included).
        if self.is_distributed and isinstance(self, DDPStrategy):
            super().set_world_ranks()

    @override
    def _configure_launcher(self) -> None:
        """The Trainer has set the devices: become single-device or DDP (see the module docstring)."""
        declared = type(self)._declared
        if self.is_distributed:
            self.__class__ = _shaped(declared, DDPStrategy)
            self.set_world_ranks()
        else:
            self.__class__ = _shaped(declared, SingleDeviceStrategy)
            # SingleDeviceStrategy's state: the device, and rank 0 of 1 whatever a cluster environment
            # says (task 1 of 2 of a SLURM job that runs one device per task)
            self._root_device = self.parallel_devices[0] if self.parallel_devices else torch.device("cpu")
            self.global_rank, self.local_rank, self.world_size = 0, 0, 1
        super()._configure_launcher()

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if self.shard is not None and not self.is_distributed:
            log.info(f"shard={self.shard!r}: one process holds every unit whole; nothing is sharded")
        self._start_session(trainer)

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not self.is_distributed:
            return model  # SingleDeviceStrategy's: nothing to wrap or shard
        if self.shard is None:
            return super()._setup_model(model)
        return self._shard_model(model)

    def _shard_model(self, model: nn.Module) -> nn.Module:
        """Shard or replicate each unit with FSDP2 (``sharding.py``) instead of the DDP wrapper."""
        from lightning_mosaic import sharding
        from lightning_mosaic.devices import DeviceSpec

        units = select_modules(model, self._configured_modules())
        memory = DeviceSpec.from_current(self.root_device).memory_bytes if self.shard == "auto" else None
        chosen = sharding.choose(units, self.shard, self.world_size, memory)
        self.layout = sharding.apply(
            model, units, chosen, self.world_size, self.root_device.type, mp_policy=self.mp_policy
        )
        if self.is_global_zero:
            log.info(self.layout.describe())
        return model

    def _profiler(self) -> MosaicProfiler | None:
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        callbacks = trainer.callbacks if trainer is not None else []
        return next((c for c in callbacks if isinstance(c, MosaicProfiler)), None)

    def _configured_modules(self) -> Sequence[str] | None:
        profiler = self._profiler()
        return self.module_names or (profiler.module_names if profiler is not None else None)

    @property
    @override
    def restore_checkpoint_after_setup(self) -> bool:
        """Sharded units load their checkpoint shards in place, after they are sharded."""
        return self.shard is not None and self.is_distributed

    @property
    @override
    def lightning_restore_optimizer(self) -> bool:
        """Sharded: ``load_checkpoint`` restores the optimizers' shards itself."""
        return not self.restore_checkpoint_after_setup

    def block_backward_sync(self) -> Any:  # DDPStrategy's
        if self.layout is None:
            return super().block_backward_sync()
        return _NoGradientSync(self.model)

    def _register_ddp_hooks(self) -> None:  # DDPStrategy's
        if self.layout is not None:
            return  # FSDP2 reduces the gradients; no DDP wrapper
        self._register_comm_hook()

    def _register_comm_hook(self) -> None:
        """On a GPU, every gradient bucket's communication (the user's hook, by default an all-reduce)
        waits for the work queued on the units' streams and the micro-batch lanes.

        DDP copies each gradient into its bucket on the stream current when the gradient is ready (a
        unit's stream in backward) but starts the communication after the current stream alone.
        """
        if self.root_device.type != "cuda":
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        hook = self._ddp_comm_hook or allreduce_hook
        if self._ddp_comm_wrapper is not None:
            hook = self._ddp_comm_wrapper(hook)
        assert isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        self.model.register_comm_hook(state=self._ddp_comm_state, hook=self._after_units(hook))

    def _after_units(self, hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def after_units(state: Any, bucket: Any) -> Any:
            engine = self.engine
            backend = engine.backend if engine is not None else None
            if backend is not None and backend.concurrent:
                current = torch.cuda.current_stream()
                for stream in [*backend.streams.values(), *getattr(backend, "lanes", {}).values()]:
                    if stream != current:
                        current.wait_stream(stream)
            return hook(state, bucket)

        return after_units

    @override
    def teardown(self) -> None:
        if self.lookahead is not None:
            self.lookahead.detach()  # kept for its counts
        if self.session is not None:
            self.session.close()
        super().teardown()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name, start_method in (("mosaic", "popen"), ("mosaic_spawn", "spawn"), ("mosaic_fork", "fork")):
            strategy_registry.register(
                name,
                cls,
                description=f"Mosaic strategy (modules side by side on each GPU), {start_method!r} start",
                override=True,
                start_method=start_method,
            )

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # A shape is made at run time; a pickle (spawned processes, deep copies) names it by the
        # user's class and the Lightning strategy it is.
        shape = type(self)
        return (_remade, (shape._declared, shape._lightning), self.__dict__)

    # ------------------------------------------------------------------ the session

    @property
    def units(self) -> dict[str, nn.Module]:
        return self.session.units if self.session is not None else {}

    @property
    def engine(self) -> Engine | None:
        return self.session.engine if self.session is not None else None

    @property
    def graph(self) -> ModuleGraph | None:
        return self.session.graph if self.session is not None else None

    @property
    def plan(self) -> Plan | None:
        return self.session.plan if self.session is not None else None

    @property
    def planned(self) -> bool:
        return self.session is not None and self.session.planned

    @property
    def active_micro_batches(self) -> int:
        """Micro-batches per training step right now (1 while the plan of ``plan="auto"`` is pending)."""
        return self.session.micro_batches_now if self.session is not None else 1

    def _run_config(self, trainer: pl.Trainer, fitting: bool) -> SessionConfig:
        """This run's session configuration: the strategy's, with a ``MosaicProfiler``'s settings,
        the Trainer's directories and precision, and the units' layout."""
        config = self.config
        changes: dict[str, Any] = {}
        profiler = self._profiler()
        settings = config.profile
        if profiler is not None and fitting:
            settings, changes["profile_requested"] = profiler.settings, True
            if profiler.module_names is not None:
                if config.modules is not None and list(config.modules) != profiler.module_names:
                    raise ValueError(
                        f"MosaicStrategy(modules={list(config.modules)}) and MosaicProfiler(modules="
                        f"{profiler.module_names}) name different units; name them in one place"
                    )
                changes["modules"] = profiler.module_names
        changes["profile"] = settings.in_directory(trainer.default_root_dir)
        changes["precision"] = str(trainer.precision)
        changes["out_dir"] = trainer.log_dir  # every rank: it broadcasts
        if self.layout is not None:
            changes["notes"] = (self.layout.describe(),)
            if self.layout.sharded:
                changes["unprofilable"] = (
                    f"units {self.layout.sharded} are sharded: the profiler replays units on one process"
                    " alone, and FSDP2's collectives need every rank"
                )
        return replace(config, **changes)

    def _start_session(self, trainer: pl.Trainer) -> None:
        """A session for the LightningModule (kept while the model and its units stay the same), started."""
        module = self.lightning_module
        fitting = trainer.state.fn == TrainerFn.FITTING
        config = self._run_config(trainer, fitting)
        units = select_modules(module, list(config.modules) if config.modules is not None else None)
        layout = self.layout.units if self.layout is not None else dict.fromkeys(units, REPLICATED)
        config = replace(config, resident_bytes=resident_bytes(units, layout, self.world_size))
        session = self.session
        if (
            session is None
            or _key(session.selection) != _key(units)
            or session.config.modules != config.modules
        ):
            if session is not None:
                session.close()
            session = Session(
                module,
                self.root_device,
                config,
                broadcast=self.broadcast,
                is_main=self.is_global_zero,
                batch_size_of=extract_batch_size,
                on_apply=self._plan_applied,
            )
        profiler = self._profiler()
        restored, self._restored = self._restored, None
        if restored is None and profiler is not None and profiler.restored is not None:
            restored = {"profile": profiler.restored}
        if restored is not None:
            session.load_state_dict(restored)
        self.session = session
        session.start(fitting, config)
        if profiler is not None and fitting:
            profiler.share(session)

    def _plan_applied(self, plan: Plan | None) -> None:
        """The engine was attached for ``plan``: run its lookahead units one step ahead."""
        if self.lookahead is not None:
            self.lookahead.detach()
            self.lookahead = None
        if (
            plan is not None
            and plan.lookahead
            and self.session is not None
            and self.session.engine is not None
        ):
            self.lookahead = Lookahead(self.session.units, list(plan.lookahead), self.session.engine)
            self.lookahead.attach()

    # With sharded units the model's and optimizers' states are FSDP2's (DTensors): ``sharded.py``
    # saves and loads them as Lightning's ModelParallelStrategy does, so its checkpoints and ours
    # load into each other.

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.layout is None:
            return super().lightning_module_state_dict()
        return sharded.model_state(self.model, self._save_distributed_checkpoint)

    @override
    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self.layout is None:
            return super().optimizer_state(optimizer)
        return sharded.optimizer_state(
            self.model, optimizer, self._save_distributed_checkpoint, self.global_rank
        )

    @override
    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        if self.layout is None:
            super().load_model_state_dict(checkpoint, strict=strict)
        # sharded: loaded in place by load_checkpoint

    @override
    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        if self.layout is None:
            super().load_optimizer_state_dict(checkpoint)

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        # What the run learned (a profile, the plan made from it) goes where the strategy writes the
        # file, as DeepSpeed's adds its client state; with nothing learned the checkpoint is plain
        # Lightning's, key for key.
        state = self.session.state_dict() if self.session is not None else None
        if state is not None and state["profile"] is not None:
            checkpoint[CHECKPOINT_KEY] = state
        if self.layout is None:
            super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint(..., storage_options=...) is not supported with"
                " shard=: sharded checkpoints do not go through the CheckpointIO"
            )
        sharded.save(
            checkpoint,
            Path(self.broadcast(filepath)),  # rank 0's path, so that every rank writes to one place
            self._save_distributed_checkpoint,
            self.global_rank,
            lambda c, p: super(MosaicStrategy, self).save_checkpoint(c, p),
        )

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if self.layout is not None:
            assert self.model is not None and self.lightning_module is not None
            checkpoint = sharded.load(
                Path(self.broadcast(checkpoint_path)),
                self.model,
                self.optimizers,
                self.lightning_module.strict_loading,
                weights_only,
            )
        else:
            checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        restored = checkpoint.get(CHECKPOINT_KEY)
        if self.layout is not None and self.session is not None and restored is not None:
            self.session.load_state_dict(restored)  # sharded: restored after setup, the session has started
        else:
            self._restored = restored
        return checkpoint

    # ------------------------------------------------------------------ hooks and steps

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        trainer = self.lightning_module.trainer
        if self.session is not None:
            self.session.before_step(trainer.global_step, batch)
        if self.lookahead is not None:
            self.lookahead.step(trainer, batch, batch_idx)

    @override
    def on_train_end(self) -> None:
        super().on_train_end()
        if self.session is not None:
            self.session.finish(self.lightning_module.trainer.global_step)

    @override
    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if self.session is not None:
            self.session.abort()

    @override
    def pre_backward(self, closure_loss: Tensor) -> None:
        if self.engine is not None:
            self.engine.before_backward(closure_loss)
        super().pre_backward(closure_loss)

    @override
    def post_backward(self, closure_loss: Tensor) -> None:
        if self.engine is not None:
            self.engine.join()  # before optimizer.step: the caller's stream waits for every unit stream
        super().post_backward(closure_loss)

    def _run_step(self, train: bool, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.session is None:
            return step(*args, **kwargs)
        with self.session.step(train):
            return step(*args, **kwargs)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        k = self.active_micro_batches
        try:
            if k <= 1 or not args:
                return self._run_step(True, super().training_step, *args, **kwargs)
            return self._run_step(True, self._micro_training_step, k, *args, **kwargs)
        finally:
            if self.lookahead is not None:
                self.lookahead.end_step()

    def _micro_training_step(self, k: int, *args: Any, **kwargs: Any) -> Any:
        """``training_step`` on ``k`` micro-batches, inside one forward of the DDP wrapper if there is one."""
        module = self.lightning_module
        assert self.engine is not None

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

    @override
    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step(False, super().validation_step, *args, **kwargs)

    @override
    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step(False, super().test_step, *args, **kwargs)

    @override
    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_step(False, super().predict_step, *args, **kwargs)


_SHAPES: dict[tuple[type, type], type] = {}


def _shaped(declared: type[MosaicStrategy], lightning: type[Strategy]) -> type:
    """``declared`` (``MosaicStrategy`` or a user's subclass) as a ``lightning`` strategy
    (``SingleDeviceStrategy`` or ``DDPStrategy``), made once; it keeps the declared class's name."""
    key = (declared, lightning)
    if key not in _SHAPES:
        namespace = {"__module__": declared.__module__, "__qualname__": declared.__qualname__}
        namespace.update(_declared=declared, _lightning=lightning, __doc__=declared.__doc__)
        _SHAPES[key] = type(declared.__name__, (declared, lightning), namespace)
    return _SHAPES[key]


def _is_shape(cls: type) -> bool:
    """Whether ``cls`` is a shape made by :func:`_shaped` (not a class a user declared)."""
    return "_lightning" in cls.__dict__


def _remade(declared: type[MosaicStrategy], lightning: type[Strategy]) -> MosaicStrategy:
    """An empty strategy of the shape ``(declared, lightning)``, for unpickling."""
    return object.__new__(_shaped(declared, lightning))


# A MosaicStrategy takes a shape (a concrete Lightning strategy) as its __init__ begins; Python and the
# tools that refuse an abstract class (LightningCLI's jsonargparse) must let it be instantiated.
MosaicStrategy.__abstractmethods__ = frozenset()


def _key(units: dict[str, nn.Module]) -> list[tuple[str, int]]:
    return [(name, id(module)) for name, module in units.items()]
