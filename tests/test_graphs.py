"""Per-unit CUDA graphs (engine/graphs.py, engine/graphable.py), on a CPU through EmulatedCapture.

The emulated capture keeps a graph's static memory as a GPU does (outputs and gradients are
rewritten in place by every replay), so these tests catch what a graph would get wrong: outputs
overwritten by a later call, gradients accumulated into the graph's own tensors, buffers and random
numbers disturbed by warmup and capture, calls that a replay cannot reproduce.
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from helpers import demo_batch, demo_model, long_lived, train_recorded
from torch import nn

from lightning_mosaic.engine import Engine, find_races
from lightning_mosaic.engine.graphable import Scan, signature
from lightning_mosaic.engine.graphs import EmulatedCapture, GraphRunner, capture_for, check_graphs


@pytest.fixture(autouse=True)
def said_again():
    """Each test sees the warnings it causes (the package says each one once per process)."""
    from lightning_mosaic._logging import _said

    _said.difference_update({key for key in _said if key.startswith("graphs-")})


class Tower(nn.Module):
    """Linear, BatchNorm (running statistics change in forward), dropout (random numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.GELU(), nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _model(seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({"tower": Tower(), "head": nn.Linear(4, 2)})


def _train(model, runner=None, steps=4, accumulate=2, micro_batches=1, sizes=(6,), seed=1):
    """SGD with momentum; ``accumulate`` backward passes per optimizer step, each over
    ``micro_batches`` calls of the tower before the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(seed)
    for step in range(steps):
        for _ in range(accumulate):
            if runner is not None:
                runner.new_step()
            size = sizes[step % len(sizes)]
            loss = sum(
                model["head"](model["tower"](torch.randn(size, 8))).pow(2).mean()
                for _ in range(micro_batches)
            )
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different}"


def _graphed(model, **options):
    capture = EmulatedCapture()
    runner = GraphRunner(capture, **options)
    runner.attach({"tower": model["tower"]})
    return runner, capture


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "options",
    [dict(), dict(accumulate=1), dict(micro_batches=2), dict(sizes=(6, 4))],
    ids=["accumulate-2", "accumulate-1", "two-calls-per-step", "two-shapes"],
)
def test_a_graphed_unit_trains_bitwise_like_eager(options):
    """BatchNorm statistics, dropout masks, momentum and accumulated gradients all equal eager."""
    expected = _state(_train(_model(), **options))
    model = _model()
    runner, capture = _graphed(model)
    _train(model, runner, **options)
    _assert_same(expected, _state(model))
    graphs = runner.graphs["tower"]
    calls = options.get("micro_batches", 1)
    shapes = len(options.get("sizes", (6,)))
    assert len(graphs) == calls * shapes, "one graph per call position and input shape"
    assert all(g.backward for g in graphs.values())
    assert sum(g.replays for g in capture.graphs) > 0, "the steps replayed the graphs"
    assert not runner.dropped


def test_gradients_are_never_the_graphs_own_tensors():
    """Handed over as .grad, the graph's gradient tensors would be rewritten by the next replay."""
    model = _model()
    runner, _ = _graphed(model)
    runner.new_step()
    model["head"](model["tower"](torch.randn(6, 8))).sum().backward()
    (graphed,) = runner.graphs["tower"].values()
    owned = {g.data_ptr() for g in graphed.grads if g is not None}
    grads = {p.grad.data_ptr() for p in model["tower"].parameters()}
    assert owned and not owned & grads


def test_outputs_survive_the_next_replay():
    model = _model()
    runner, _ = _graphed(model)
    model.eval()  # no dropout: the same input gives the same output
    model["tower"].train()
    kept = []
    for _ in range(2):
        runner.new_step()
        kept.append(model["tower"](torch.randn(6, 8)))
    runner.new_step()
    again = model["tower"](torch.zeros(6, 8))
    assert not torch.equal(kept[0], kept[1])
    assert not torch.equal(again, kept[1]), "the earlier outputs are copies, not the graph's memory"


def test_autocast_is_captured_with_the_callers_dtype():
    x = torch.randn(6, 8)
    model = _model()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model["tower"](x)
    runner, _ = _graphed(model)
    runner.new_step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model["tower"](x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    runner.new_step()
    assert model["tower"](x).dtype == torch.float32, "without autocast: another signature, another graph"
    assert len(runner.graphs["tower"]) == 2


# ---------------------------------------------------------------- what cannot be captured


class Branches(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(8, 8)
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.kind == "item":
            return y * y.mean().item()
        if self.kind == "branch":
            return y if y.sum() > 0 else -y
        if self.kind == "nonzero":
            return y + y.nonzero().shape[0]
        if self.kind == "masked_select":
            return y.masked_select(y > 0).sum() + y
        if self.kind == "generator":
            return y + torch.rand(y.shape, generator=self.generator)
        if self.kind == "device":
            y.to("meta")
            return y
        raise AssertionError(self.kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("item", "reads a tensor's value on the host"),
        ("branch", "reads a tensor's value on the host"),
        ("nonzero", "aten::nonzero, whose output shape depends on the data"),
        ("masked_select", "aten::masked_select, whose output shape depends on the data"),
        ("generator", "torch.Generator of its own"),
        ("device", "copies tensors between cpu and meta"),
    ],
)
def test_calls_a_replay_cannot_reproduce_run_eagerly_and_say_why(kind, reason, caplog):
    torch.manual_seed(0)
    unit = Branches(kind)
    eager = copy.deepcopy(unit)
    x = torch.randn(4, 8)
    expected = [eager(x) for _ in range(2)]
    runner = GraphRunner(EmulatedCapture())
    runner.attach({"unit": unit})
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        got = []
        for _ in range(2):
            runner.new_step()
            got.append(unit(x))
    assert reason in runner.dropped["unit"]
    assert f"unit unit is not captured as a CUDA graph: it {runner.dropped['unit']}" in caplog.text
    assert caplog.text.count("is not captured") == 1, "said once"
    assert not runner.graphs["unit"]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b), "the scan's warmup left no trace (random numbers put back)"


class Cache:
    """A cache object, as Hugging Face models return in their outputs (compared by identity)."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys


class Cached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple:
        y = self.fc(x)
        return y, Cache(y)


def test_an_output_object_a_replay_cannot_refresh_is_not_captured():
    unit = Cached()
    runner = GraphRunner(EmulatedCapture())
    runner.attach({"unit": unit})
    x = torch.randn(2, 8)
    for _ in range(2):
        runner.new_step()
        out, cache = unit(x)
        assert cache.keys is not None and torch.equal(cache.keys, out)
    assert (
        runner.dropped["unit"] == "returns a Cache object, which a replay would hand out as it was captured"
    )


def test_the_default_generator_is_graph_safe():
    scan = Scan()
    with scan:
        nn.functional.dropout(torch.ones(4), 0.5)
    assert scan.rng and not scan.reasons


def test_too_many_shapes_drop_the_unit(caplog):
    model = _model()
    runner, _ = _graphed(model, max_graphs=2)
    expected = _state(_train(_model(), sizes=(6, 4, 5), accumulate=1))
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        _train(model, runner, sizes=(6, 4, 5), accumulate=1)
    assert "would need more than 2 graphs" in runner.dropped["tower"]
    assert "(5, 8)" in runner.dropped["tower"], "names the shape that did not fit"
    assert not runner.graphs["tower"], "its graphs are freed"
    _assert_same(expected, _state(model))


def test_hooked_parts_are_not_captured():
    model = _model()
    model["tower"].net[0].register_forward_hook(lambda *a: None)
    runner, _ = _graphed(model)
    assert "has hooks on its parts net.0" in runner.dropped["tower"]
    assert "forward" not in model["tower"].__dict__, "left as it was"


def test_arguments_compared_by_value():
    unit = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    a = signature(unit, (x,), {"scale": 2}, "cpu")
    assert a == signature(unit, (torch.ones(2, 8),), {"scale": 2}, "cpu")
    assert a != signature(unit, (x,), {"scale": 3}, "cpu")
    assert a != signature(unit, (torch.randn(3, 8),), {"scale": 2}, "cpu")
    assert signature(unit, (x, object()), {}, "cpu") is None
    plain = signature(unit, (x,), {}, "cpu")  # plain tensor arguments: the short path
    assert plain == signature(unit, (torch.zeros(2, 8),), {}, "cpu")
    assert plain != signature(unit, (x.double(),), {}, "cpu")
    assert plain != signature(unit, (x.requires_grad_(),), {}, "cpu")
    assert plain != signature(unit, (torch.zeros(2, 8), torch.zeros(2, 8)), {}, "cpu")
    with torch.no_grad():
        assert plain != signature(unit, (torch.zeros(2, 8),), {}, "cpu")
    unit.eval()
    assert plain != signature(unit, (torch.zeros(2, 8),), {}, "cpu")


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, double: bool = False) -> dict:
        y = self.linear(x)
        if mask is not None:
            y = y * mask
        return {"hidden": y * 2 if double else y, "pooled": (y.mean(1),), "size": x.shape[0]}


def test_keywords_and_nested_outputs_keep_their_structure():
    torch.manual_seed(0)
    unit = Keywords()
    eager = copy.deepcopy(unit)
    runner = GraphRunner(EmulatedCapture())
    runner.attach({"unit": unit})
    x, mask = torch.randn(3, 8), torch.ones(3, 8)
    for double in (False, True, False):
        runner.new_step()
        got, expected = unit(x, mask=mask, double=double), eager(x, mask=mask, double=double)
        assert got.keys() == expected.keys() and got["size"] == 3
        assert torch.equal(got["hidden"], expected["hidden"]) and torch.equal(
            got["pooled"][0], expected["pooled"][0]
        )
    assert len(runner.graphs["unit"]) == 2, "double=True is another graph"


# ---------------------------------------------------------------- frozen units, hooks, parameters


def test_a_frozen_unit_is_graphed_forward_only():
    model = _model()
    model["tower"].requires_grad_(False)
    runner, _ = _graphed(model)
    frozen = _model()
    frozen["tower"].requires_grad_(False)
    expected = _state(_train(frozen, steps=2))
    _train(model, runner, steps=2)
    (graphed,) = runner.graphs["tower"].values()
    assert not graphed.backward, "nothing needs a gradient: only the forward is captured"
    _assert_same(expected, _state(model))
    runner.new_step()
    with torch.no_grad():
        out = model["tower"](torch.randn(6, 8))
    assert not out.requires_grad


def test_parameter_hooks_fire_once_per_backward_never_in_warmup_or_capture():
    """DDP's reducer and users hook the parameters: they must see each real gradient once."""
    model = _model()
    seen = {"tensor": 0, "accumulated": 0}
    weight = model["tower"].net[0].weight
    weight.register_hook(lambda g: seen.__setitem__("tensor", seen["tensor"] + 1))
    weight.register_post_accumulate_grad_hook(
        lambda p: seen.__setitem__("accumulated", seen["accumulated"] + 1)
    )
    runner, _ = _graphed(model)
    _train(model, runner, steps=2, accumulate=2)
    assert seen == {"tensor": 4, "accumulated": 4}


def test_moved_parameters_are_captured_again(caplog):
    model = _model()
    runner, _ = _graphed(model)
    _train(model, runner, steps=1, accumulate=1)
    model["tower"].net[0].weight.data = model["tower"].net[0].weight.data.clone()
    expected = _model()
    _train(expected, steps=1, accumulate=1)
    expected["tower"].net[0].weight.data = expected["tower"].net[0].weight.data.clone()
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        _train(model, runner, steps=1, accumulate=1, seed=2)
        _train(expected, steps=1, accumulate=1, seed=2)
    assert "its parameters or buffers were replaced or moved; captured again" in caplog.text
    assert runner.captures["tower"] == 2
    _assert_same(_state(expected), _state(model))


def _freeze(tower: nn.Module) -> None:
    tower.net[0].requires_grad_(False)  # what the backward differentiates changes


def _replace(tower: nn.Module) -> None:
    tower.net[0].weight = nn.Parameter(tower.net[0].weight.detach() * 2)  # another Parameter object
    tower.net[1].running_mean = tower.net[1].running_mean + 1  # another buffer


@pytest.mark.parametrize("change", [_freeze, _replace], ids=["frozen-parameter", "replaced-tensors"])
def test_a_unit_changed_between_steps_is_captured_again(change):
    """The graph reads the memory it captured and differentiates what was trainable then."""
    model = _model()
    runner, _ = _graphed(model)
    expected = _model()
    for m in (model, expected):
        _train(m, runner if m is model else None, steps=1, accumulate=1)
        change(m["tower"])
        _train(m, runner if m is model else None, steps=1, accumulate=1, seed=2)
    assert runner.captures["tower"] == 2
    _assert_same(_state(expected), _state(model))


# ---------------------------------------------------------------- copies, detach, the engine


def test_copies_of_a_graphed_unit_run_eagerly():
    model = _model()
    runner, capture = _graphed(model)
    _train(model, runner, steps=1, accumulate=1)
    replays = sum(g.replays for g in capture.graphs)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        runner.new_step()
        clone["tower"](torch.randn(6, 8)).sum().backward()
        assert sum(g.replays for g in capture.graphs) == replays, "the copy ran its own forward"
        assert clone["tower"].net[0].weight.grad is not None


def test_detach_gives_each_unit_its_forward_back():
    model = _model()
    own = model["head"].forward
    model["head"].forward = lambda x: own(x) * 0  # an instance forward set before
    runner = GraphRunner(EmulatedCapture())
    runner.attach({"tower": model["tower"], "head": model["head"]})
    runner.detach()
    assert "forward" not in model["tower"].__dict__
    assert torch.equal(model["head"](torch.ones(1, 4)), torch.zeros(1, 2))


def test_the_engine_graphs_training_steps_only():
    model = demo_model()
    capture = EmulatedCapture()
    engine = Engine()
    units = {"audio": model.audio, "projector": model.projector}
    engine.attach(units, graphs=["audio"], capture=capture)
    batch = demo_batch(0)
    with engine.step():  # validation, prediction
        model._loss(batch)
    with engine.paused():  # the profiler's replays
        model._loss(batch)
    assert not capture.graphs
    with engine.step(train=True):
        model._loss(batch)
    assert engine.graphs is not None and len(engine.graphs.graphs["audio"]) == 1
    engine.detach()
    assert engine.graphs is None and "forward" not in model.audio.__dict__
    with pytest.raises(ValueError, match=r"graphs \['nosuch'\] are not units of the engine"):
        engine.attach(units, graphs=["nosuch"], capture=capture)
    assert not engine.attached


def test_graphed_units_stay_race_free_on_their_streams():
    model = demo_model()
    expected = demo_model()
    train_recorded(expected, lambda step: expected._loss(demo_batch(step)), steps=3)
    engine = train_recorded(
        model,
        lambda step: model._loss(demo_batch(step)),
        steps=3,
        graphs=["audio", "projector", "llm"],
        capture=EmulatedCapture(),
    )
    assert {u for u, g in engine.graphs.graphs.items() if g} == {"audio", "projector", "llm"}
    races = find_races(engine.backend.log, long_lived(model))
    assert not races, races[:3]
    for (name, a), b in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_graphs_option_is_checked():
    assert check_graphs("auto") == "auto" and check_graphs(True) is True and check_graphs(False) is False
    with pytest.raises(ValueError, match=r"graphs='yes' is not one of 'auto' .*, True .* or False"):
        check_graphs("yes")
    assert capture_for(torch.device("cpu")) is None, "CUDA graphs need a CUDA device"


def test_sharded_units_are_not_captured(tmp_path):
    """FSDP2 gathers a sharded unit's parameters into new memory at every call."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _model()
        fully_shard(model["tower"], mesh=init_device_mesh("cpu", (1,)))
        runner, _ = _graphed(model)
        assert runner.dropped["tower"] == "holds sharded parameters (FSDP2), gathered anew at every call"
    finally:
        dist.destroy_process_group()
