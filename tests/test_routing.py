"""Units found in Hugging Face multimodal models: routers between towers opened up from one traced step."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import assert_bitwise_equal, demo_model, parameters, trainer
from hf_families import FAMILIES, UNITS, HFModule, loader
from torch import nn

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.engine import RecordingBackend
from lightning_mosaic.routing import RouteProbe, is_stack, may_route, open_routers, stacks
from lightning_mosaic.selection import select_modules
from lightning_mosaic.session.units import Units
from lightning_mosaic.tracing import Tracer


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x).relu()


class Tower(nn.Module):
    """An embedding (no stack) and a stack of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return x


class Chain(nn.Module):
    """A ResNet's shape: a stem, then two stages that only read each other's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.stage1 = nn.Sequential(Block(), Block())
        self.stage2 = nn.Sequential(Block(), Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stem(x)))


class Router(nn.Module):
    """Routes between two towers (each reads its own input) through a projector; no compute of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = Tower()
        self.projector = nn.Linear(8, 8)
        self.text = Tower()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.text(text + self.projector(self.vision(image)))


class Holder(nn.Module):
    def __init__(self, inner: nn.Module, head: bool = True) -> None:
        super().__init__()
        self.model = inner
        if head:
            self.head = nn.Linear(8, 1)


def _refined(root: nn.Module, step) -> tuple[list[str], dict[str, str]]:
    """The units of ``root`` after tracing ``step`` (whose inputs are made before it, as a batch is)."""
    units = Units(root, None)
    tracer = Tracer(units.modules, record_calls=True, probe=units.probe())
    with tracer:
        step()
    return units.refinement(tracer.ran, tracer.probe)


def test_stacks_are_lists_of_composite_blocks_of_one_class():
    assert is_stack(nn.ModuleList([Block(), Block()]))
    assert not is_stack(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))  # leaves: an MLP
    assert not is_stack(nn.ModuleList([Block()]))
    assert stacks(Tower()) == ["layers"] and stacks(Chain()) == ["stage1", "stage2"]
    assert stacks(Router()) == ["vision.layers", "text.layers"]
    assert may_route(Router()) and not may_route(Tower())
    assert may_route(Chain())  # two stacks in two children: only the traced step tells it is a chain


def test_a_router_between_towers_is_replaced_by_its_parts_and_each_unit_says_why():
    root, image, text = Holder(Router()), torch.randn(2, 8), torch.randn(2, 8)
    names, reasons = _refined(root, lambda: root.head(root.model(image, text)).sum())
    assert names == ["model.vision", "model.projector", "model.text", "head"]
    assert reasons["model.vision"] == (
        "a part of 'model', which routes between the towers 'model.vision', 'model.text';"
        " one stack of blocks (model.vision.layers)"
    )
    assert reasons["head"] == "a child of the model that owns parameters"


def test_a_chain_of_stacks_and_a_single_tower_stay_one_unit():
    chain, x = Holder(Chain()), torch.randn(2, 8)
    names, _ = _refined(chain, lambda: chain.head(chain.model(x)).sum())
    assert names == ["model", "head"]
    tower = Holder(Tower())
    names, reasons = _refined(tower, lambda: tower.head(tower.model(x)).sum())
    assert names == ["model", "head"] and reasons["model"].endswith("one stack of blocks (model.layers)")


def test_a_router_whose_second_tower_only_reads_the_first_stays_one_unit():
    class Serial(Router):
        def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return self.text(self.projector(self.vision(image)))  # the text tower reads no input of its own

    root, image, text = Holder(Serial()), torch.randn(2, 8), torch.randn(2, 8)
    names, _ = _refined(root, lambda: root.head(root.model(image, text)).sum())
    assert names == ["model", "head"]


def test_the_probe_sees_the_step_inputs_through_an_embedding_but_not_through_another_tower():
    root, image, text = Router(), torch.randn(2, 8), torch.randn(2, 8)
    probe = RouteProbe(root, {"router": root})
    assert set(probe.children["router"]) == {"router.vision", "router.projector", "router.text"}
    with probe:
        root(image, text)
    assert probe.probed["router.vision"].sources == {"<step>"}
    assert probe.probed["router.projector"].sources == {"router.vision"}
    assert probe.probed["router.text"].sources == {"<step>", "router.projector"}
    opened = open_routers({"router": root}, probe, {})
    assert opened.opened == ["router"] and list(opened.units) == list(probe.children["router"])
    assert not root._forward_hooks and not root.vision._forward_pre_hooks


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hugging_face_units_are_found_and_train_bitwise_like_plain_lightning(family, tmp_path):
    before, plain = parameters(HFModule(family)), HFModule(family)
    trainer("auto", max_steps=3).fit(plain, loader(family))
    mosaic = HFModule(family)
    t = trainer(MosaicStrategy(), max_steps=3, default_root_dir=tmp_path)
    t.fit(mosaic, loader(family))
    assert list(t.strategy.units) == UNITS[family]
    assert set(t.strategy.graph.called) == set(UNITS[family])
    after = parameters(plain)  # every unit trained (a key bias has no gradient: not every tensor moves)
    named = {id(p): n for n, p in plain.named_parameters()}  # a tied head's weight is the embedding's
    for unit in UNITS[family]:
        names = {named[id(p)] for p in plain.get_submodule(unit).parameters()}
        assert any(not torch.equal(before[k], after[k]) for k in names), unit
    assert_bitwise_equal(after, parameters(mosaic))


def test_units_named_in_modules_stay_as_given_and_a_harmless_cache_does_not_run_alone(tmp_path, caplog):
    plain = HFModule("qwen2_vl")
    trainer("auto", max_steps=3).fit(plain, loader("qwen2_vl"))
    given = HFModule("qwen2_vl")
    strategy = MosaicStrategy(
        modules=["model.model", "model.lm_head"], plan="concurrent", backend=RecordingBackend()
    )
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        trainer(strategy, max_steps=3, default_root_dir=tmp_path).fit(given, loader("qwen2_vl"))
    assert list(strategy.units) == ["model.model", "model.lm_head"]
    # Qwen2VLModel keeps rope_deltas (read only when generating): not a reason to run alone
    assert strategy.graph.effects == {}
    assert (
        "unit model.model keeps tensors in its attribute rope_deltas, which nothing else reads" in caplog.text
    )
    assert_bitwise_equal(parameters(plain), parameters(given))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_micro_batches_split_hugging_face_batches_packed_patches_included(family, tmp_path):
    before = parameters(HFModule(family))
    plain = HFModule(
        family, lr=0.1, optimizer="sgd"
    )  # AdamW turns rounding in tiny gradients into lr-sized steps
    trainer("auto", max_steps=3).fit(plain, loader(family, size=4))
    split = HFModule(family, lr=0.1, optimizer="sgd")
    backend = RecordingBackend()
    strategy = MosaicStrategy(plan="concurrent", backend=backend, micro_batches=2)
    trainer(strategy, max_steps=3, default_root_dir=tmp_path).fit(split, loader(family, size=4))
    assert strategy.plan.micro_batches == 2
    # the tower ran once per micro-batch in the 2 steps since the units were refined (after the first)
    assert strategy.engine.calls[UNITS[family][0]] == 2 * 2
    a, b = parameters(plain), parameters(split)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], before[k]) for k in a)


def test_a_qwen_vl_profile_replays_the_packed_tower_below_the_full_batch_then_plans(tmp_path):
    plain = HFModule("qwen2_vl")
    trainer("auto", max_steps=4).fit(plain, loader("qwen2_vl", size=4))
    profiled = HFModule("qwen2_vl")
    strategy = MosaicStrategy(backend="cpu", warmup_steps=1, profile_seconds=20)
    trainer(strategy, max_steps=4, default_root_dir=tmp_path).fit(profiled, loader("qwen2_vl", size=4))
    profile = strategy.session.profile
    assert profile is not None and [m.name for m in profile.modules] == UNITS["qwen2_vl"]
    visual = {s.batch for s in profile.samples if s.module == "model.model.visual" and s.feasible}
    assert visual == {1, 2, 4}, "the packed pixel_values were cut by image_grid_thw"
    assert strategy.plan is not None and sorted(strategy.plan.modules) == sorted(UNITS["qwen2_vl"])
    assert_bitwise_equal(parameters(plain), parameters(profiled))


def test_the_demo_and_zoo_units_are_unchanged():
    model = demo_model()
    assert list(Units(model, None).selection) == ["vision", "audio", "projector", "llm"]
    assert Units(model, None).probe() is None  # nothing in it may route
    assert list(select_modules(model)) == ["vision", "audio", "projector", "llm"]


def test_a_resumed_run_takes_the_refined_units_and_plan_from_the_checkpoint(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    import lightning_mosaic.session.profiling as profiling_module

    def fit(root, steps, ckpt_path=None):
        strategy = MosaicStrategy(backend="cpu", warmup_steps=1, profile_seconds=20)
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3)
        t = trainer(
            strategy, max_steps=steps, default_root_dir=root, callbacks=[saver], enable_checkpointing=True
        )
        model = HFModule("llava", seed=1 if ckpt_path else 0)
        t.fit(model, loader("llava", batches=3), ckpt_path=ckpt_path)  # a checkpoint at an epoch end
        return strategy, model

    _, straight = fit(tmp_path / "straight", 6)
    first, _ = fit(tmp_path / "first", 3)
    assert list(first.units) == UNITS["llava"]

    def never(*args, **kwargs):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profiling_module, "profile_units", never)
    resumed, model = fit(tmp_path / "again", 6, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt")
    assert list(resumed.units) == UNITS["llava"] and resumed.plan == first.plan
    assert_bitwise_equal(parameters(straight), parameters(model))


def test_two_cpu_processes_find_the_same_units_and_train_like_ddp(tmp_path):
    from helpers import RecordRank
    from lightning.pytorch.strategies import DDPStrategy

    for name in ("ddp", "mosaic"):
        (tmp_path / name).mkdir()
    ddp_model, mosaic_model = HFModule("llava"), HFModule("llava")
    # fork: a spawned copy of a transformers 5 model returns no hidden states (plain DDP fails alike);
    # the vision tower's last layer is unused (LLaVA reads the second to last)
    ddp = dict(start_method="fork", find_unused_parameters=True)
    trainer(DDPStrategy(**ddp), devices=2, max_steps=3, callbacks=[RecordRank(tmp_path / "ddp")]).fit(
        ddp_model, loader("llava")
    )
    strategy = MosaicStrategy(**ddp)
    trainer(strategy, devices=2, max_steps=3, callbacks=[RecordRank(tmp_path / "mosaic")]).fit(
        mosaic_model, loader("llava")
    )
    ranks = [torch.load(tmp_path / "mosaic" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [list(r["graph"]["inputs"]) for r in ranks] == [UNITS["llava"]] * 2  # rank 0 chose, both took it
    plain = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in range(2):
        assert_bitwise_equal(plain[rank]["params"], ranks[rank]["params"])


def test_graphed_hugging_face_units_train_bitwise_like_plain_lightning(monkeypatch, tmp_path):
    from lightning_mosaic import session as session_module
    from lightning_mosaic.engine.graphs import EmulatedCapture

    capture = EmulatedCapture()
    monkeypatch.setattr(session_module, "capture_for", lambda device: capture)
    plain = HFModule("llava")
    trainer("auto", max_steps=4).fit(plain, loader("llava"))
    graphed = HFModule("llava")
    strategy = MosaicStrategy(graphs=True)
    trainer(strategy, max_steps=4, default_root_dir=tmp_path).fit(graphed, loader("llava"))
    assert list(strategy.units) == UNITS["llava"]
    assert strategy.plan.graphs, "some unit is eligible for a graph"
    assert sum(g.replays for g in capture.graphs) > 0
    assert_bitwise_equal(parameters(plain), parameters(graphed))
