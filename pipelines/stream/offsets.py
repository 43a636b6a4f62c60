"""The stream's offsets: where each partition stands, which reads may be applied next, and
how they are cut into micro-batches. Pure functions, unit-tested without a broker.

The committer applies a partition's records only in offset order and without a gap, so the
offsets it records with a commit (``stream_batches``) prove it skipped nothing. The Java
reader (``--kafka_reader=xlang``) emits one read per record, and a compacted topic (or a
transactional one, with its commit markers) has offsets no record holds: there a gap is
accepted once the read after it has waited ``gap_wait_s`` (docs/STREAMING.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from freshindex.errors import FreshIndexError
from freshindex.schemas.messages import PollBatch
from freshindex.transforms.kafka_io import PartitionStart


class PartitionsLost(FreshIndexError):
    """Another process has indexed past where this one read (a rebalance moved the
    partition on, or a second stream reads the group's partitions): nothing of the batch is
    committed. A group member rejoins and resumes from the recorded offsets."""

    def __init__(self, group_id: str, lost: dict[tuple[str, int], tuple[int, int]]):
        where = ", ".join(
            f"{t}[{p}] read from {start}, recorded at {rec}"
            for (t, p), (start, rec) in lost.items()
        )
        super().__init__(
            f"partitions of group {group_id} were indexed by another process: {where}",
            hint="run several stream processes with stream.membership: group (or give "
            "each its own group_id and topics)",
        )
        self.lost = lost


def lost_partitions(
    claimed: dict[tuple[str, int], int | None], recorded: dict[tuple[str, int], int]
) -> dict[tuple[str, int], tuple[int, int]]:
    """The partitions another process has indexed past where this batch starts:
    ``(topic, partition) -> (this batch's start, the largest recorded offset)``.

    ``claimed``: where this process's reads of each partition start (None: unknown, the
    Java reader's first read). ``recorded``: the largest offsets recorded with the table's
    commits for the group (``store.read_stream_offsets``). Recorded at or before the start
    is this process's own progress (or older); only further means someone else moved on.
    """
    return {
        key: (start, recorded[key])
        for key, start in claimed.items()
        if start is not None and recorded.get(key, start) > start
    }


@dataclass
class Progress:
    """The committer's durable state: the next offset of every partition, and batches done."""

    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    batches: int = 0


def initial_progress(starts: Iterable[PartitionStart], batches: int = 0) -> Progress:
    """Where a run resumes: the start offsets resolved before it began (none for the Java
    reader, which resumes from the group's committed offsets; its first read sets them);
    ``batches``: the micro-batches the run committed before."""
    return Progress(positions={(s.topic, s.partition): s.start for s in starts}, batches=batches)


def take_contiguous(
    polls: Sequence[PollBatch],
    positions: dict[tuple[str, int], int],
    *,
    gap_wait_s: float | None = None,
    now: float | None = None,
) -> tuple[list[PollBatch], list[PollBatch]]:
    """(ready, held): per partition, the reads that continue its position without a gap, in
    order; reads after a gap are held until the missing one arrives. Reads already indexed
    are dropped, so a re-delivered read is never applied twice. Ready reads come in read
    order across partitions and in offset order within one.

    ``gap_wait_s`` (the Java reader): a read after a gap that was read at least this long
    before ``now`` is taken anyway, and the partition's position jumps over the gap (offsets
    that no record holds). None: held until the missing read arrives.
    """
    ready: list[tuple[float, PollBatch]] = []
    held: list[PollBatch] = []
    by_partition: dict[tuple[str, int], list[PollBatch]] = {}
    for poll in polls:
        by_partition.setdefault((poll.topic, poll.partition), []).append(poll)
    for key, items in by_partition.items():
        position = positions.get(key)
        # a read goes after the ones before it in its partition, even one read later
        order = float("-inf")
        for poll in sorted(items, key=lambda p: p.start):
            if position is None:
                position = poll.start
            if poll.end <= position:
                continue
            if poll.start > position and not gap_expired(poll, gap_wait_s, now):
                held.append(poll)
                continue
            if poll.start < position:
                poll = dataclasses.replace(
                    poll,
                    start=position,
                    records=tuple(r for r in poll.records if r.offset >= position),
                )
            order = max(order, poll.read_at)
            ready.append((order, poll))
            position = poll.end
    ready.sort(key=lambda item: (item[0], item[1].topic, item[1].partition, item[1].start))
    return [poll for _, poll in ready], held


def gap_expired(poll: PollBatch, gap_wait_s: float | None, now: float | None) -> bool:
    """Whether a read held after a gap has waited ``gap_wait_s`` (never when it is None)."""
    return gap_wait_s is not None and now is not None and now - poll.read_at >= gap_wait_s


def gap_deadline(held: Sequence[PollBatch], gap_wait_s: float | None) -> float | None:
    """When the first of the ``held`` reads stops waiting for its gap; None: never."""
    if gap_wait_s is None or not held:
        return None
    return min(p.read_at for p in held) + gap_wait_s


def split_batches(polls: Sequence[PollBatch], max_messages: int) -> list[list[PollBatch]]:
    """Consecutive groups of at most ``max_messages`` records; a read is cut at a record
    boundary where needed, so each partition's offsets stay contiguous across groups."""
    groups: list[list[PollBatch]] = []
    current: list[PollBatch] = []
    room = max_messages
    for poll in polls:
        while len(poll.records) > room:
            if room:
                cut = poll.records[room].offset
                head = dataclasses.replace(poll, end=cut, records=poll.records[:room])
                poll = dataclasses.replace(poll, start=cut, records=poll.records[room:])
                current.append(head)
            groups.append(current)
            current, room = [], max_messages
        current.append(poll)
        room -= len(poll.records)
    if current:
        groups.append(current)
    return groups


def batch_due(pending: Sequence[PollBatch], interval_s: float) -> float:
    """When the micro-batch holding ``pending`` closes: ``interval_s`` after its oldest
    message reached Kafka.

    The reader and the committer share a thread on the DirectRunner, so what arrives while
    a batch is being committed waits in Kafka and is read only after it. Counting the
    interval from the read would make such a message wait twice (docs/benchmarks/streaming.md);
    counting from its Kafka timestamp, it goes into the next batch at once. A timestamp
    ahead of the read (a producer's clock running fast) counts from the read instead, so a
    batch never waits longer than the interval.
    """
    arrived = min(
        min([p.read_at] + [r.timestamp_ms / 1000 for r in p.records if r.timestamp_ms >= 0])
        for p in pending
    )
    return arrived + interval_s
