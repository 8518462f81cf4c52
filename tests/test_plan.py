"""Plan data: the temporal plan, validation, immutability, changed copies, JSON round-trip, files."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.plan import Phase, Plan, concurrent_plan, temporal_plan


def graph() -> ModuleGraph:
    return ModuleGraph.from_edges(
        {"llm": ["projector"], "vision": [], "audio": [], "projector": ["vision", "audio"]}
    )


def test_temporal_plan_runs_each_unit_alone_in_topological_order():
    plan = temporal_plan(graph(), "cpu")
    assert plan.modules == ["vision", "audio", "projector", "llm"]
    assert all(len(p.quotas) == 1 and list(p.quotas.values()) == [None] for p in plan.phases)
    assert plan.is_temporal and plan.micro_batches == 1 and plan.device == "cpu"
    assert plan.speedup is None
    plan.check_graph(graph())


def test_describe():
    text = temporal_plan(graph()).describe()
    assert text.splitlines()[0] == (
        "Plan for cpu: temporal (every module alone on the whole device), 1 micro-batch per step"
    )
    assert "  phase 3: llm (whole device)" in text
    side_by_side = Plan(
        phases=[Phase({"vision": 64, "audio": 64}), Phase({"llm": None})],
        micro_batches=2,
        device="NVIDIA H100 80GB HBM3",
        method="heuristic",
        predicted_step_s=0.080,
        predicted_temporal_s=0.100,
        predicted_peak_bytes=3 * 2**30,
        notes=["vision is frozen"],
    )
    text = side_by_side.describe()
    assert not side_by_side.is_temporal
    assert text.splitlines()[0] == "Plan for NVIDIA H100 80GB HBM3: heuristic, 2 micro-batches per step"
    assert "  phase 0: vision (64), audio (64)" in text
    assert "  predicted step 80.00 ms vs temporal 100.00 ms (1.25x)" in text
    assert "  predicted peak memory 3.00 GiB" in text
    assert "  note: vision is frozen" in text


def test_json_round_trip_and_files(tmp_path):
    plan = Plan(
        phases=[Phase({"vision": 32, "audio": 96}), Phase({"llm": None})],
        micro_batches=4,
        predicted_step_s=0.5,
        predicted_temporal_s=0.6,
    )
    assert Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan


def test_unreadable_plan_file_names_the_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"plan file .*plan.json is not valid JSON: Expecting property name"):
        Plan.load(path)
    with pytest.raises(ValueError, match=r"cannot read plan file .*missing.json: No such file"):
        Plan.load(tmp_path / "missing.json")
    path.write_text('{"schema_version": 7, "phases": []}')
    with pytest.raises(
        ValueError, match=r"plan file .*plan.json: schema version 7 is not supported \(expected 1\)"
    ):
        Plan.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff{}", r"is not UTF-8 text \(byte 0 is b'\\xff'\)"),
        (b"[]", r"plan file .*plan.json must be an object, got a list: \[\]"),
        (
            b'{"schema_version": 1, "phases": {"vision": 8}}',
            r"plan file .*: plan\.phases must be a list, got an object",
        ),
        (b'{"schema_version": 1, "phases": [["vision"]]}', r"phases\[0\] must be an object, got a list"),
        (
            b'{"schema_version": 1, "phases": [{"vision": "8"}]}',
            r"plan\.phases\[0\]\['vision'\] must be an integer or null, got a string: '8'",
        ),
        (
            b'{"schema_version": 1, "phases": [{"vision": true}]}',
            r"must be an integer or null, got true or false",
        ),
        (
            b'{"schema_version": 1, "phases": [{"a": null}], "micro_batches": 0}',
            r"plan file .*: micro_batches must be an int >= 1, got 0",
        ),
        (
            b'{"schema_version": 1, "phases": [{"a": null}], "lookahead": "a"}',
            r"plan\.lookahead must be a list, got a string: 'a'",
        ),
    ],
)
def test_a_malformed_plan_file_is_an_error_naming_the_file_and_the_field(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Plan.load(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Phase({}), r"a phase needs at least one module"),
        (lambda: Phase({"vision": 0}), r"quota of module 'vision' must be a positive int or None, got 0"),
        (lambda: Phase({"vision": -8}), r"got -8"),
        (lambda: Phase({"vision": 2.5}), r"got 2.5"),
        (
            lambda: Plan(phases=[Phase({"a": None})], micro_batches=0),
            r"micro_batches must be an int >= 1, got 0",
        ),
        (
            lambda: Plan(phases=[Phase({"a": None}), Phase({"a": 8})]),
            r"module 'a' appears in phase 0 and in phase 1",
        ),
    ],
)
def test_invalid_plans(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_check_graph_names_the_mismatch():
    plan = Plan(phases=[Phase({"vision": None}), Phase({"text": None})])
    with pytest.raises(
        ValueError,
        match=r"missing from the plan \['llm', 'audio', 'projector'\].*not in the graph \['text'\]",
    ):
        plan.check_graph(graph())


def test_plans_are_read_only_and_changed_by_copy():
    plan = Plan([Phase({"vision": 32, "audio": 96}), Phase({"llm": None})], lookahead=["vision"])
    assert isinstance(plan.phases, tuple) and plan.lookahead == ("vision",) and plan.notes == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.micro_batches = 2
    with pytest.raises(TypeError):
        plan.phases[0].quotas["vision"] = 8  # the quotas are a read-only mapping
    with pytest.raises(AttributeError):
        plan.notes.append("no")
    noted = plan.with_notes("first", "second")
    assert noted.notes == ("first", "second") and plan.notes == (), "the original is unchanged"
    assert dataclasses.replace(plan, device="cpu").device == "cpu" and plan.device == "unknown"
    assert plan.phases[0].quotas == {"vision": 32, "audio": 96}
    assert hash(plan) == hash(Plan.from_dict(plan.to_dict())) and plan == Plan.from_dict(plan.to_dict())
    assert pickle.loads(pickle.dumps(plan)) == plan


def test_with_micro_batches_drops_lookahead_and_says_so():
    plan = Plan([Phase({"vision": None}), Phase({"llm": None})], lookahead=["vision"], method="heuristic")
    split = plan.with_micro_batches(2)
    assert split.micro_batches == 2 and split.lookahead == ()
    assert split.notes == (
        "micro_batches=2 given: vision not computed one step ahead",
        "micro_batches=2 given: 2 micro-batches instead of the plan's 1",
    )
    assert split.with_micro_batches(2) == split, "asking again changes nothing"
    assert plan.with_micro_batches(1) is plan


def test_check_units_and_concurrent_plans():
    plan = concurrent_plan(graph(), {"vision": 32, "audio": 16}, "cpu", method="streams backend")
    assert [p.quotas for p in plan.phases] == [
        {"vision": 32, "audio": 16},
        {"projector": None},
        {"llm": None},
    ]
    plan.check_units(["llm", "projector", "audio", "vision"])
    with pytest.raises(
        ValueError, match=r"the plan is for modules \['vision', 'audio', 'projector', 'llm'\]"
    ):
        plan.check_units(["vision"])


def test_graphs_round_trip_and_name_units_of_the_plan():
    plan = Plan(phases=({"a": None}, {"b": None}), graphs=("a",))
    assert Plan.from_json(plan.to_json()) == plan and plan.graphs == ("a",)
    assert not plan.plain and plan.sequential, "sequential, but not what plain PyTorch runs"
    assert "CUDA graphs (one replay per pass in training steps): a" in plan.describe()
    with pytest.raises(ValueError, match=r"graphs names \['c'\], which are in no phase of the plan"):
        Plan(phases=({"a": None},), graphs=("c",))
    with pytest.raises(ValueError, match=r"units \['a'\] are both computed one step ahead and graphed"):
        Plan(phases=({"a": None},), graphs=("a",), lookahead=("a",))
    data = plan.to_dict()
    data["graphs"] = "a"
    with pytest.raises(ValueError, match=r"plan\.graphs must be a list, got a string"):
        Plan.from_dict(data)
    del data["graphs"]
    assert Plan.from_dict(data).graphs == (), "plans written before graphs existed read as none"
