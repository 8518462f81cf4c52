"""The project's files: JSON read strictly (every problem names its source), written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any


class FormatError(ValueError):
    """A file or stored entry that is not what it should be; the message names where it came from."""


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON data in ``path`` (a ``what``: "profile", "plan file", ...), read strictly: a file that
    cannot be read, is not UTF-8 text or is not JSON is a :class:`FormatError` naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise FormatError(f"cannot read {what} {path}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(
            f"{what} {path} is not UTF-8 text (byte {err.start} is {raw[err.start : err.start + 1]!r})"
        ) from err
    return parse_json(text, f"{what} {path}")


def parse_json(text: str, source: str) -> Any:
    """The JSON data in ``text``; text that is not JSON is a :class:`FormatError` naming ``source``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FormatError(
            f"{source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err


def expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` when it is a ``kind`` (bools are not numbers), else a :class:`FormatError` saying what
    ``where`` holds instead."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        shown = [k for k in kinds if not (k is int and float in kinds)]  # a number covers integers
        names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in shown)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise FormatError(f"{where} must be {names}, got {got}: {_short(value)}")
    return value


OTHERS = "..."  # a key of an object schema: fields besides those named are allowed


@dataclass(frozen=True)
class MapOf:
    """An object schema of any keys (names chosen by the data, such as units) whose values are ``kind``."""

    kind: Any


def schema_problems(value: Any, schema: Any, where: str, optional: frozenset[str] = frozenset()) -> list[str]:
    """Every way ``value`` departs from ``schema`` (empty: none), each naming its place from ``where``.

    A schema is a type or a tuple of types (``type(None)`` for null), ``[item]`` for a list of items,
    a dict for an object with those fields (``optional`` names those it may lack; an ``OTHERS`` key
    allows fields besides), or :class:`MapOf` for an object of any keys. One idiom for every file
    the project reads: profiles, plans, module graphs.
    """
    problems: list[str] = []
    _walk(value, schema, where, optional, problems)
    return problems


def check_schema(value: Any, schema: Any, where: str, optional: frozenset[str] = frozenset()) -> None:
    """Raise a :class:`FormatError` listing how ``value`` departs from ``schema`` (the first five)."""
    problems = schema_problems(value, schema, where, optional)
    if problems:
        raise FormatError(summary(problems))


def summary(problems: list[str], most: int = 5) -> str:
    """The first ``most`` problems, and how many more there are."""
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def _walk(value: Any, schema: Any, where: str, optional: frozenset[str], problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not _is(value, dict, problems, where):
            return
        missing = [key for key in schema if key != OTHERS and key not in value and key not in optional]
        if missing:
            problems.append(f"{where} misses {missing}")
        extra = [key for key in value if key not in schema]
        if extra and OTHERS not in schema:
            problems.append(f"{where} has unknown fields {extra}")
        for key, sub in schema.items():
            if key != OTHERS and key in value:
                _walk(value[key], sub, f"{where}.{key}", optional, problems)
    elif isinstance(schema, MapOf):
        if _is(value, dict, problems, where):
            for key, item in value.items():
                _walk(item, schema.kind, f"{where}[{key!r}]", optional, problems)
    elif isinstance(schema, list):
        if _is(value, list, problems, where):
            for i, item in enumerate(value):
                _walk(item, schema[0], f"{where}[{i}]", optional, problems)
    else:
        _is(value, schema, problems, where)


def _is(value: Any, kind: type | tuple[type, ...], problems: list[str], where: str) -> bool:
    try:
        expect(value, kind, where)
    except FormatError as err:
        problems.append(str(err))
        return False
    return True


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _short(value: Any, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a unique temporary file in the same directory, flushed
    to disk, then renamed over ``path`` (concurrent writers never mix their bytes, readers never see
    half a file); the temporary file is removed when anything fails. The directory is created."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
