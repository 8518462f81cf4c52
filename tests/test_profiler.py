"""The profiler: capture a step's inputs, replay each unit alone over (batch, quota), change nothing."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lightning_mosaic.inputs import InputCapture
from lightning_mosaic.profile import Profile, validate
from lightning_mosaic.profiler import profile_units, quota_grid


class Trainable(nn.Module):
    """Linear + BatchNorm (buffers) + dropout (RNG); remembers the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.seen: list[int] = []

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        self.seen.append(x.shape[0])
        return self.drop(self.norm(self.fc(x))) * scale


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = Trainable()
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.head = Head()

    def forward(self, x: Tensor) -> Tensor:
        a = self.enc(x, scale=2.0)
        b = self.frozen(x)
        return self.head(torch.cat([a, b], dim=1)).mean()


def captured_model(batch: int = 8):
    torch.manual_seed(0)
    model = Model()
    units = {"enc": model.enc, "frozen": model.frozen, "head": model.head}
    with InputCapture(units) as capture:
        model(torch.randn(batch, 8)).backward()
    model.zero_grad(set_to_none=True)
    return model, units, capture


@settings(max_examples=300, deadline=None)
@given(
    multiple=st.sampled_from([1, 2, 4, 8]),
    units=st.integers(1, 8),
    capacity=st.integers(1, 400),
    steps=st.integers(2, 10),
)
def test_quota_grid_spans_the_device_evenly_in_square_root(multiple, units, capacity, steps):
    minimum = multiple * units  # the hardware's minimum is a multiple of its granularity
    assume(capacity > minimum)
    grid = quota_grid(capacity, minimum, multiple, steps)
    if multiple == 1 and capacity <= steps:  # a few threads: every count
        assert grid == list(range(minimum, capacity + 1))
        return
    assert grid == sorted(set(grid)) and grid[0] == minimum and grid[-1] == capacity
    assert len(grid) <= steps
    assert all(q % multiple == 0 for q in grid[:-1]), "partitions come in the hardware's granularity"
    # Evenly spaced in square root: each point is within rounding (half a granule) of an ideal one...
    low, step = math.sqrt(minimum), (math.sqrt(capacity) - math.sqrt(minimum)) / (steps - 1)
    ideal = [(low + step * i) ** 2 for i in range(steps)]
    for q in grid[1:-1]:
        assert min(abs(q - x) for x in ideal) <= multiple / 2 + 1e-9, (q, ideal)
    # ...and no point is lost where the ideal points are more than a granule apart.
    if step * (2 * low + step) > multiple:
        assert len(grid) == steps


def test_quota_grid_on_small_devices_measures_every_count():
    assert quota_grid(4) == [1, 2, 3, 4]
    assert quota_grid(2, 2) == [2]


def test_capture_records_the_first_call_detached_with_its_state():
    _, units, capture = captured_model()
    assert set(capture.captured) == {"enc", "frozen", "head"}
    assert capture.calls == {"enc": 1, "frozen": 1, "head": 1}
    enc = capture.captured["enc"]
    assert enc.args[0].shape == (8, 8) and enc.kwargs == {"scale": 2.0}
    assert enc.grad_enabled and enc.training and enc.autocast is None
    head_input = capture.captured["head"].args[0]
    assert head_input.requires_grad and head_input.is_leaf  # grad-requiring, but cut from the step's graph
    assert not enc.args[0].requires_grad
    assert not units["enc"]._forward_pre_hooks  # stopped: hooks removed


def test_capture_counts_repeated_calls_and_sees_autocast():
    enc = nn.Linear(4, 4)
    with InputCapture({"enc": enc}) as capture, torch.autocast("cpu", dtype=torch.bfloat16):
        enc(torch.randn(2, 4))
        enc(torch.randn(3, 4))
    assert capture.calls["enc"] == 2
    assert capture.captured["enc"].args[0].shape == (2, 4)
    assert capture.captured["enc"].autocast == ("cpu", torch.bfloat16)


def test_profile_covers_the_grid_and_leaves_the_model_as_it_was():
    model, units, capture = captured_model()
    model.train()
    model.frozen.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    profile = profile_units(
        units, capture.captured, 8, calls=capture.calls, warmup=1, repeats=2, progress=False
    )

    assert validate(profile.to_dict()) == []
    assert Profile.from_json(profile.to_json()) == profile
    assert profile.device == "cpu" and profile.quota_unit == "thread"
    for s in (s for s in profile.samples if s.feasible):  # on a CPU the issuing thread runs the pass
        assert s.host_seconds is not None and abs(s.host_seconds - s.seconds) <= 0.2 * s.seconds + 1e-4
    assert profile.capacity == torch.get_num_threads()
    assert profile.quotas == quota_grid(profile.capacity)
    assert profile.batches == [2, 4, 8]
    assert profile.complete
    info = {m.name: m for m in profile.modules}
    assert (info["enc"].trainable, info["enc"].backward, info["enc"].batch_rows) == (True, True, 8)
    assert (info["frozen"].trainable, info["frozen"].backward) == (False, False)
    assert (info["head"].trainable, info["head"].backward) == (True, True)
    for name in units:
        passes = ("forward", "backward") if info[name].backward else ("forward",)
        for pass_ in passes:
            points = {(s.batch, s.quota) for s in profile.samples_of(name, pass_)}
            assert points == {(b, q) for b in [2, 4, 8] for q in profile.quotas}, (name, pass_)
        assert not profile.samples_of(name, "backward") if not info[name].backward else True
    assert all(s.seconds > 0 and s.repeats >= 1 for s in profile.samples)
    assert {m.batch for m in profile.memory if m.module == "enc"} == {2, 4, 8}
    enc_memory = sorted((m.batch, m.activation_bytes) for m in profile.memory if m.module == "enc")
    assert enc_memory[0][1] > 0 and enc_memory[0][1] < enc_memory[-1][1]  # activations grow with the batch
    assert set(model.enc.seen) == {2, 4, 8}  # replayed on slices of the captured batch

    # nothing observable changed: parameters, buffers (BatchNorm statistics), RNG, modes, grads
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.enc.training and not model.frozen.training
    assert all(p.grad is None for p in model.parameters())


def test_module_called_without_grad_has_no_backward_and_inputs_keep_requires_grad():
    frozen = nn.Linear(4, 4).requires_grad_(False)
    trainable = nn.Linear(4, 4)
    x = torch.randn(4, 4, requires_grad=True)
    with InputCapture({"frozen": frozen, "nograd": trainable}) as capture:
        frozen(x).sum().backward()
        with torch.no_grad():
            trainable(x)
    profile = profile_units(
        {"frozen": frozen, "nograd": trainable}, capture.captured, 4, quotas=[1], repeats=1, progress=False
    )
    info = {m.name: m for m in profile.modules}
    assert info["frozen"].backward  # frozen weights, but its input requires grad
    assert not info["frozen"].trainable
    assert not info["nograd"].backward  # called under no_grad: forward only
    assert profile.samples_of("frozen", "backward") and not profile.samples_of("nograd", "backward")


class Greedy(nn.Module):
    """Runs out of memory above two samples, like a module that does not fit at the full batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return self.fc(x)


def test_out_of_memory_points_are_kept_as_infeasible_and_profiling_goes_on():
    greedy, other = Greedy(), nn.Linear(4, 4)
    captured = {}
    with InputCapture({"greedy": greedy, "other": other}) as capture:
        greedy(torch.randn(2, 4))  # captured at a batch that fits ...
        other(torch.randn(8, 4))
    captured = dict(capture.captured)
    captured["greedy"].args = (torch.randn(8, 4),)  # ... replayed from the full batch of 8
    profile = profile_units(
        {"greedy": greedy, "other": other}, captured, 8, quotas=[1], repeats=1, progress=False
    )
    assert profile.complete
    bad = [s for s in profile.samples if not s.feasible]
    assert {(s.module, s.batch, s.pass_) for s in bad} == {
        ("greedy", b, p) for b in (4, 8) for p in ("forward", "backward")
    }
    assert all(s.seconds is None and "out of memory" in s.error for s in bad)
    assert {(s.batch, s.pass_) for s in profile.samples_of("greedy", "forward")} == {(2, "forward")}
    assert len(profile.samples_of("other", "forward")) == 3 * len(profile.quotas)  # fully measured
    memory = {m.batch: m.feasible for m in profile.memory if m.module == "greedy"}
    assert memory == {2: True, 4: False, 8: False}
    assert Profile.from_json(profile.to_json()).samples == profile.samples  # infeasible kept in JSON


def test_max_seconds_stops_early_and_says_so(caplog):
    _, units, capture = captured_model()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        profile = profile_units(units, capture.captured, 8, max_seconds=1e-6, progress=False)
    assert not profile.complete
    points = {(s.module, s.batch, s.quota) for s in profile.samples}
    assert points == {(name, 8, profile.capacity) for name in units}  # the essential points only
    assert "profiling stopped after max_seconds=1e-06" in caplog.text
    assert any("stopped by max_seconds" in note for note in profile.notes)
    assert "stopped early" in profile.describe()


def test_unsliceable_inputs_are_profiled_at_the_full_batch_only():
    enc = nn.Linear(4, 4)
    with InputCapture({"enc": enc}) as capture:
        enc(torch.randn(6, 4)), enc.weight.sum()
    captured = dict(capture.captured)
    captured["enc"].args = (torch.randn(6, 4), torch.randn(5, 4))  # first dims disagree, none is the batch
    enc.forward = lambda a, b: a @ enc.weight  # type: ignore[method-assign]
    profile = profile_units({"enc": enc}, captured, 8, quotas=[1], repeats=1, progress=False)
    assert {s.batch for s in profile.samples} == {8}
    assert profile.modules[0].batch_rows is None
    assert any("no batch dimension found" in note for note in profile.notes)


def test_a_unit_that_cannot_be_replayed_alone_is_left_out_with_a_warning(caplog):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            if not x.requires_grad:  # the step fed it a grad-requiring tensor; the replay does too...
                raise ValueError("shape mismatch")  # ...but pretend the replay cannot reproduce the call
            return self.fc(x)

    broken, fine = Broken(), nn.Linear(2, 2)
    units = {"broken": broken, "fine": fine}
    with InputCapture(units) as capture:
        fine(broken(torch.randn(2, 2, requires_grad=True)))
    capture.captured["broken"].args = (torch.randn(2, 2),)  # its replay raises
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        profile = profile_units(units, capture.captured, 2, quotas=[1], repeats=1, progress=False)
    assert profile.module_names == ["fine"] and {s.module for s in profile.samples} == {"fine"}
    message = "replaying module 'broken' alone at batch 2 failed: ValueError: shape mismatch; broken is not"
    assert message in caplog.text and any(message in note for note in profile.notes)
    with pytest.raises(RuntimeError, match=r"no unit could be replayed alone: .*broken.*shape mismatch"):
        profile_units({"broken": broken}, capture.captured, 2, quotas=[1], progress=False)


def test_batchnorm_at_one_sample_skips_that_batch_and_keeps_the_others(caplog):
    """A training-mode BatchNorm refuses one sample per channel: batch 1 of 4 is left out, loudly."""
    enc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with InputCapture({"enc": enc}) as capture:
        enc(torch.randn(4, 4))
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        profile = profile_units({"enc": enc}, capture.captured, 4, quotas=[1], repeats=1, progress=False)
    assert {s.batch for s in profile.samples} == {2, 4}
    assert "enc is profiled without batch 1" in caplog.text
    assert "Expected more than 1 value per channel" in caplog.text


def test_sequence_first_inputs_are_sliced_along_their_batch_dimension():
    """An ``(L, N, D)`` input with a fixed ``(L, L)`` mask: the batch is dimension 1, the mask stays whole."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)  # batch_first=False
    mask = torch.full((5, 5), float("-inf")).triu(1)
    seen: list[tuple[int, ...]] = []
    layer.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with InputCapture({"text": layer}) as capture:
        layer(torch.randn(5, 8, 8), mask)
    profile = profile_units({"text": layer}, capture.captured, 8, quotas=[1], repeats=1, progress=False)
    assert {s.batch for s in profile.samples} == {2, 4, 8} and not profile.notes
    assert {shape for shape in seen[1:]} == {(5, 2, 8), (5, 4, 8), (5, 8, 8)}


def test_a_no_grad_first_call_gives_way_to_the_call_with_grad():
    """A gradient cache runs the encoder under no_grad over the batch, then with grad per chunk: the
    call with a backward pass is the one replayed, and the calls are those of one step."""
    enc = nn.Linear(4, 4)
    capture = InputCapture({"enc": enc})
    for _ in range(2):  # two steps: calls are per step, not summed
        with capture:
            x = torch.randn(8, 4)
            with torch.no_grad():
                enc(x)
            for chunk in x.chunk(2):
                enc(chunk).sum().backward()
    call = capture.captured["enc"]
    assert call.grad_enabled and call.args[0].shape == (4, 4)
    assert capture.calls["enc"] == 3
    profile = profile_units({"enc": enc}, capture.captured, 8, quotas=[1], repeats=1, progress=False)
    assert profile.module("enc").backward and profile.module("enc").batch_rows == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 must be a whole number, at least 1"),
        ({"repeats": 0}, "repeats=0 must be a whole number of runs, 1 or more"),
        ({"warmup": -1}, "warmup=-1 must be a whole number of runs"),
        ({"max_seconds": 0}, "max_seconds=0 must be a positive number of seconds"),
        ({"batch_fractions": [0.5, 1.5]}, r"batch_fractions=\[0.5, 1.5\] must be numbers in \(0, 1\]"),
        ({"quotas": [0, 1]}, r"quotas \[0, 1\] must be whole numbers of threads from 1 to \d+"),
    ],
)
def test_bad_arguments(kwargs, message):
    _, units, capture = captured_model()
    options = {"batch_size": 8, "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        profile_units(units, capture.captured, **options)


def test_nothing_captured_is_an_error():
    with pytest.raises(ValueError, match=r"none of \['enc'\] ran in the captured step"):
        profile_units({"enc": nn.Linear(2, 2)}, {}, 4, progress=False)


@pytest.mark.gpu
def test_gpu_profile_uses_green_context_quotas():
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 2048)).cuda()
    with InputCapture({"big": big}) as capture:
        big(torch.randn(512, 2048, device="cuda")).sum().backward()
    profile = profile_units({"big": big}, capture.captured, 512, repeats=3, progress=False)
    assert (
        profile.quota_unit == "sm"
        and profile.capacity == torch.cuda.get_device_properties(0).multi_processor_count
    )
    assert profile.quotas[-1] == profile.capacity
    assert all(m.peak_bytes and m.peak_bytes > 0 for m in profile.memory)
    if profile.green_context is not None:
        full = {s.quota: s.seconds for s in profile.samples_of("big", "forward") if s.batch == 512}
        smallest = min(full)
        assert full[smallest] > 2 * full[profile.capacity], full  # a few SMs are much slower than all of them
        assert all(g["granted"] % profile.granularity[1] == 0 for g in profile.grants)


def test_a_unit_not_called_is_not_profiled_but_fingerprinted(caplog):
    from lightning_mosaic.profile import fingerprint

    used, unused = nn.Linear(4, 4), nn.Linear(4, 4)
    with InputCapture({"used": used, "unused": unused}) as capture:
        used(torch.randn(2, 4))
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        profile = profile_units(
            {"used": used, "unused": unused}, capture.captured, 2, quotas=[1], repeats=1, progress=False
        )
    assert "modules ['unused'] were not called in the captured step" in caplog.text
    assert profile.module_names == ["used"]
    assert profile.fingerprint == fingerprint({"used": used, "unused": unused})  # reusable by the same run


def test_units_are_also_timed_as_cuda_graphs_and_the_model_is_left_as_it_was():
    from lightning_mosaic.engine.graphs import EmulatedCapture

    model, units, capture = captured_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    graphs = EmulatedCapture()
    profile = profile_units(
        units,
        capture.captured,
        8,
        warmup=1,
        repeats=2,
        progress=False,
        capture=graphs,
        graph_units=["enc", "head"],
    )
    timed = {(s.module, s.pass_) for s in profile.graphed}
    assert timed == {("enc", "forward"), ("enc", "backward"), ("head", "forward"), ("head", "backward")}
    assert all(
        s.batch == 8 and s.quota == profile.capacity and s.host_seconds is not None for s in profile.graphed
    )
    assert all(g.replays >= 3 for g in graphs.graphs), "warmup and timed replays"
    assert Profile.from_json(profile.to_json()) == profile and validate(profile.to_dict()) == []
    assert "timed as CUDA graphs too (full batch, whole device): enc, head" in profile.describe()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_a_unit_that_cannot_be_captured_is_profiled_eagerly_and_noted():
    from lightning_mosaic.engine.graphs import EmulatedCapture

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: Tensor) -> Tensor:
            y = self.fc(x)
            return y * y.max().item()

    unit = Reads()
    with InputCapture({"reads": unit}) as capture:
        unit(torch.randn(4, 8)).sum().backward()
    profile = profile_units({"reads": unit}, capture.captured, 4, warmup=1, repeats=1, progress=False,
                            capture=EmulatedCapture())  # fmt: skip
    assert profile.graphed == [] and profile.samples
    assert any(
        n.startswith("reads: not captured as a CUDA graph (it reads a tensor's value") for n in profile.notes
    )


class _PackedTower(nn.Module):
    """Qwen-VL's shape: ``(patches, features)`` packed rows and one ``(t, h, w)`` grid row per image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.seen: list[tuple[tuple[int, ...], int]] = []

    def forward(self, hidden: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(hidden.shape), int(grid_thw.shape[0])))
        assert hidden.shape[0] == int(grid_thw.prod(-1).sum()), "patches and grid disagree"
        return self.fc(hidden)


def test_packed_inputs_are_cut_by_their_lengths_for_replays_below_the_full_batch():
    tower = _PackedTower()
    grid = torch.tensor([[1, 2, 2], [1, 2, 3], [1, 1, 2], [1, 2, 2]])  # 4, 6, 2 and 4 patches
    with InputCapture({"visual": tower}) as capture:
        tower(torch.randn(16, 6), grid)
    profile = profile_units({"visual": tower}, capture.captured, 4, quotas=[1], repeats=1, progress=False)
    assert {s.batch for s in profile.samples} == {1, 2, 4} and not profile.notes
    assert set(tower.seen[1:]) == {((4, 6), 1), ((10, 6), 2), ((16, 6), 4)}


def test_a_unit_with_its_own_mosaic_split_batch_is_replayed_on_the_first_part():
    class Split(_PackedTower):
        def mosaic_split_batch(self, batch, k):
            (hidden, grid), kwargs = batch
            rows = int(grid[: len(grid) // k].prod(-1).sum())
            return [((hidden[:rows], grid[: len(grid) // k]), kwargs)] * k

    tower = Split()
    grid = torch.tensor([[1, 2, 2]] * 4)
    with InputCapture({"visual": tower}) as capture:
        tower(torch.randn(16, 6), grid)
    profile = profile_units({"visual": tower}, capture.captured, 4, quotas=[1], repeats=1, progress=False)
    assert {s.batch for s in profile.samples} == {1, 2, 4}
    assert set(tower.seen[1:]) == {((4, 6), 1), ((8, 6), 2), ((16, 6), 4)}
