"""Happens-before analysis of a stream log: race freedom and concurrency, checked without a GPU.

A log is a list of :class:`Entry`: kernel launches on a stream (with the memory they read and
write), events recorded on a stream, and streams waiting on events. Work on one stream runs in
order; work on two streams is ordered only through a record -> wait pair. :class:`HappensBefore`
replays the log with one vector clock per stream and answers whether one launch is ordered before
another; :func:`find_races` lists every launch that touches memory another stream wrote (or, for
long-lived memory, read) without being ordered after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One logged stream operation."""

    kind: str  # "launch" | "record" | "wait" | "record_stream"
    stream: str
    op: str = ""
    event: int | None = None
    reads: tuple[int, ...] = ()  # memory keys (storage addresses) read
    writes: tuple[int, ...] = ()  # memory keys written
    phase: str = "forward"  # "forward" | "backward" | "other"

    def __str__(self) -> str:
        what = self.op or (f"event {self.event}" if self.event is not None else "")
        return f"{self.kind:<13} {self.stream:<12} {self.phase:<8} {what}"


@dataclass(frozen=True)
class Race:
    """Memory touched by ``later`` on one stream while ``earlier`` on another is not ordered before it."""

    key: int
    kind: str  # "read-after-write" | "write-after-write" | "write-after-read"
    earlier: int  # index into the log
    later: int

    def describe(self, log: Sequence[Entry]) -> str:
        return (
            f"{self.kind} race on memory {self.key:#x}: [{self.later}] {log[self.later]} is not ordered after"
            f" [{self.earlier}] {log[self.earlier]}"
        )


@dataclass
class HappensBefore:
    """Vector clocks of every launch in a log."""

    log: Sequence[Entry]
    clocks: dict[int, dict[str, int]] = field(default_factory=dict)  # launch index -> vector clock
    position: dict[int, int] = field(default_factory=dict)  # launch index -> its count on its stream

    def __post_init__(self) -> None:
        streams: dict[str, dict[str, int]] = {}
        events: dict[int, dict[str, int]] = {}
        for index, entry in enumerate(self.log):
            clock = streams.setdefault(entry.stream, {})
            if entry.kind == "launch":
                clock[entry.stream] = clock.get(entry.stream, 0) + 1
                self.clocks[index] = dict(clock)
                self.position[index] = clock[entry.stream]
            elif entry.kind == "record":
                events[entry.event] = dict(clock)
            elif entry.kind == "wait":
                if entry.event not in events:
                    raise ValueError(
                        f"[{index}] {entry}: waits on event {entry.event}, which was never recorded"
                    )
                for stream, count in events[entry.event].items():
                    if clock.get(stream, 0) < count:
                        clock[stream] = count

    def ordered(self, earlier: int, later: int) -> bool:
        """True when launch ``earlier`` is guaranteed to finish before launch ``later`` starts."""
        stream = self.log[earlier].stream
        return self.clocks[later].get(stream, 0) >= self.position[earlier]

    def launches(self, where: Callable[[Entry], bool] = lambda e: True) -> list[int]:
        return [i for i in self.clocks if where(self.log[i])]

    def concurrent(self, a: Iterable[int], b: Iterable[int]) -> bool:
        """True when no launch of ``a`` is ordered before or after any launch of ``b``."""
        b = list(b)
        return all(not self.ordered(x, y) and not self.ordered(y, x) for x in a for y in b)


def find_races(log: Sequence[Entry], long_lived: Iterable[int] = ()) -> list[Race]:
    """Every unordered cross-stream access in ``log``.

    Read-after-write is checked for all memory; write-after-write and write-after-read only for
    ``long_lived`` keys (parameters, buffers, optimizer state): short-lived memory is recycled by the
    allocator, which on a GPU is stream-aware (and told about cross-stream use by ``record_stream``)
    but on the CPU that records the log is not.
    """
    hb = HappensBefore(log)
    long_lived = set(long_lived)
    last_write: dict[int, int] = {}
    last_reads: dict[int, dict[str, int]] = {}
    races: list[Race] = []
    for index in hb.clocks:
        entry = log[index]
        for key in entry.reads:
            writer = last_write.get(key)
            if writer is not None and log[writer].stream != entry.stream and not hb.ordered(writer, index):
                races.append(Race(key, "read-after-write", writer, index))
            last_reads.setdefault(key, {})[entry.stream] = index
        for key in entry.writes:
            if key in long_lived:
                writer = last_write.get(key)
                if (
                    writer is not None
                    and log[writer].stream != entry.stream
                    and not hb.ordered(writer, index)
                ):
                    races.append(Race(key, "write-after-write", writer, index))
                for stream, reader in last_reads.get(key, {}).items():
                    if stream != entry.stream and not hb.ordered(reader, index):
                        races.append(Race(key, "write-after-read", reader, index))
            last_write[key] = index
            last_reads.pop(key, None)
    return races
