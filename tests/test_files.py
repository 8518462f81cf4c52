"""Files: strict JSON reading that names the source, atomic writes under concurrent writers."""

from __future__ import annotations

import os
import threading

import pytest

from lightning_mosaic._files import FormatError, expect, read_json, write_text
from lightning_mosaic.graph import ModuleGraph


def test_read_json_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(FormatError, match=f"cannot read thing {path}: No such file"):
        read_json(path, "thing")
    path.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(FormatError, match=rf"thing {path} is not UTF-8 text \(byte 7 is b'\\xe9'\)"):
        read_json(path, "thing")
    path.write_text('{"a": 1,}')
    with pytest.raises(FormatError, match=rf"thing {path} is not valid JSON: .* at line 1, column 9"):
        read_json(path, "thing")
    path.write_text('{"a": [1, 2]}')
    assert read_json(path, "thing") == {"a": [1, 2]}


def test_expect_says_what_was_found():
    assert expect(3, int, "n") == 3
    with pytest.raises(FormatError, match="n must be an integer, got true or false: True"):
        expect(True, int, "n")
    with pytest.raises(FormatError, match=r"q must be an integer or null, got a string: '8'"):
        expect("8", (int, type(None)), "q")


def test_a_module_graph_file_is_read_strictly(tmp_path):
    path = tmp_path / "graph.json"
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    path.write_text(graph.to_json())
    assert ModuleGraph.load(path) == graph
    path.write_text('{"schema_version": 1, "inputs": {"b": "a"}}')
    with pytest.raises(
        FormatError, match=rf"module graph file {path}: graph\.inputs\['b'\] must be a list, got a string"
    ):
        ModuleGraph.load(path)
    path.write_text('{"schema_version": 1, "inputs": {"b": ["c"]}}')
    with pytest.raises(FormatError, match=r"module graph file .*: module 'b' consumes unknown module 'c'"):
        ModuleGraph.load(path)


def test_concurrent_writers_never_leave_a_mixed_or_partial_file(tmp_path):
    path = tmp_path / "out" / "plan.json"
    texts = [str(i) * 200_000 for i in range(8)]
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if path.exists():
                seen.append(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda t=t: [write_text(path, t) for _ in range(5)]) for t in texts]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert path.read_text() in texts and all(s in texts for s in seen)
    assert os.listdir(path.parent) == ["plan.json"], "no temporary file is left behind"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    write_text(path, "old")

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["plan.json"]


def test_one_schema_language_for_every_file():
    from lightning_mosaic._files import OTHERS, MapOf, check_schema, schema_problems

    schema = {"version": int, "phases": [MapOf((int, type(None)))], "notes": [str], "size": (int, float)}
    good = {"version": 1, "phases": [{"vision": 8, "llm": None}], "size": 2.5}
    assert schema_problems(good, schema, "plan", optional=frozenset({"notes"})) == []
    bad = {"phases": [{"vision": "8"}], "notes": "a", "extra": 1, "size": True}
    assert schema_problems(bad, schema, "plan") == [
        "plan misses ['version']",
        "plan has unknown fields ['extra']",
        "plan.phases[0]['vision'] must be an integer or null, got a string: '8'",
        "plan.notes must be a list, got a string: 'a'",
        "plan.size must be a number, got true or false: True",
    ]
    assert schema_problems({"version": 1, "extra": 1}, {"version": int, OTHERS: True}, "x") == []
    with pytest.raises(FormatError, match=r"^x must be an object, got a list: \[1\]$"):
        check_schema([1], {"version": int}, "x")
