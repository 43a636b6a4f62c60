"""This process's membership of the stream's Kafka consumer group (``stream.membership:
group``): several stream processes with one ``group_id`` share the topics' partitions, and
Kafka moves partitions between them when one joins, leaves or dies (a rebalance).

The member never reads records: it subscribes, keeps its partitions paused and polls only
to take part in the group (join, heartbeats, rebalances). The pipeline reads the partitions
it is given from the offsets recorded with the table's commits
(``freshindex.pipelines.stream.run``), and its committer sends the offsets it committed back
through the member, so Kafka's view of the group's progress (lag tooling) follows the table.

Kafka calls ``on_partitions_revoked`` on every member before any member gets its new
assignment; the member's ``on_revoke`` hook stops the pipeline and waits until its last
micro-batch is committed, so the next owner of a partition starts where this one stopped.
A member that dies cannot do that: Kafka notices after ``session_timeout_ms`` and the next
owner starts from the last recorded commit (the dead member's half-done batch is re-read).
A member that stalls instead of dying is fenced by the table: see ``PartitionsLost``.

    member = GroupMember(spec, on_revoke=stop_pipeline_and_wait)
    member.start()
    generation, partitions = member.wait_assignment(timeout_s=60)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from freshindex.transforms.kafka_io import KafkaSpec, new_consumer

log = logging.getLogger(__name__)

Partition = tuple[str, int]
_POLL_MS = 200


class GroupMember:
    """One member of ``spec.group_id``, subscribed to ``spec.topics``; see the module doc.

    ``on_revoke()`` runs on the Kafka client's IO thread when a rebalance starts (and when
    the member leaves); it must return once this process no longer writes for the
    partitions it had. Heartbeats wait while it runs, so it must finish well within the
    group's session timeout (a micro-batch, normally).
    """

    def __init__(self, spec: KafkaSpec, on_revoke: Callable[[], None] | None = None):
        self._spec = spec
        self._on_revoke = on_revoke
        # guards the assignment; re-entrant, so a caller may hold it around ``current``
        self._changed = threading.Condition(threading.RLock())
        self.lock = self._changed
        self._generation = 0
        self._assigned: frozenset[Partition] | None = None  # None: between generations
        self._commits: dict[Partition, tuple[int, str]] = {}
        self._closing = threading.Event()
        self._consumer = new_consumer(spec, group_id=spec.group_id)
        self._thread = threading.Thread(target=self._loop, name="kafka-group", daemon=True)

    # -- the Kafka client's rebalance callbacks (ConsumerRebalanceListener) --------------

    def on_partitions_revoked(self, revoked) -> None:
        with self._changed:
            had = self._assigned
            self._assigned = None
            self._changed.notify_all()
        if had and self._on_revoke is not None:
            started = time.monotonic()
            self._on_revoke()
            log.info(
                "group %s: gave up %s after %.1fs",
                self._spec.group_id,
                _names(had),
                time.monotonic() - started,
            )

    def on_partitions_lost(self, lost) -> None:  # evicted: someone else may own them now
        self.on_partitions_revoked(lost)

    def on_partitions_assigned(self, assigned) -> None:
        parts = frozenset((tp.topic, tp.partition) for tp in assigned)
        if assigned:
            self._consumer.pause(*assigned)  # the pipeline reads them, not this client
        with self._changed:
            self._generation += 1
            self._assigned = parts
            self._changed.notify_all()
        log.info("group %s: assigned %s", self._spec.group_id, _names(parts) or "nothing")

    # -- this process's side ---------------------------------------------------------------

    def start(self) -> GroupMember:
        from kafka import ConsumerRebalanceListener

        member = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                member.on_partitions_revoked(revoked)

            def on_partitions_assigned(self, assigned):
                member.on_partitions_assigned(assigned)

            def on_partitions_lost(self, lost):
                member.on_partitions_lost(lost)

        self._consumer.subscribe(list(self._spec.topics), listener=_Listener())
        self._thread.start()
        return self

    def wait_assignment(self, timeout_s: float) -> tuple[int, frozenset[Partition]] | None:
        """(generation, partitions) once the group has given this member its partitions
        (possibly none, when there are more members than partitions); None on timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._assigned is not None, timeout=timeout_s)
            if self._assigned is None:
                return None
            return self._generation, self._assigned

    def wait_change(self, generation: int, timeout_s: float) -> None:
        """Wait until the assignment of ``generation`` is revoked (or ``timeout_s``)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._generation != generation or self._assigned is None,
                timeout=timeout_s,
            )

    def current(self, generation: int) -> bool:
        """Whether the assignment of ``generation`` still holds."""
        with self._changed:
            return self._generation == generation and self._assigned is not None

    def commit(self, positions: dict[Partition, int], metadata: str = "") -> None:
        """Queue ``(topic, partition) -> next offset`` for Kafka; the member's thread
        commits them, for the partitions it still owns (thread-safe, never blocks)."""
        with self._changed:
            for key, offset in positions.items():
                self._commits[key] = (offset, metadata)

    def close(self) -> None:
        """Leave the group (a rebalance gives this member's partitions to the others)."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        try:
            self._consumer.close()
        except Exception as exc:  # leaving late only delays the others' rebalance
            log.warning("group %s: leaving failed: %s", self._spec.group_id, exc)

    # -- the member's thread ---------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                self._consumer.poll(timeout_ms=_POLL_MS)  # joins, rebalances; no records
                assigned = self._consumer.assignment()
                if assigned:
                    self._consumer.pause(*assigned)
                self._flush_commits()
                failures = 0
            except Exception as exc:  # the broker is away: keep trying, as a consumer does
                failures += 1
                log.warning("group %s: %s", self._spec.group_id, exc)
                self._closing.wait(min(5.0, 0.2 * 2**failures))

    def _flush_commits(self) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        with self._changed:
            owned = self._assigned or frozenset()
            pending = {k: v for k, v in self._commits.items() if k in owned}
            self._commits.clear()
        if not pending:
            return
        try:
            self._consumer.commit(
                {
                    TopicPartition(t, p): OffsetAndMetadata(offset, metadata, -1)
                    for (t, p), (offset, metadata) in pending.items()
                }
            )
        except Exception as exc:  # a rebalance began: the table holds the offsets anyway
            log.info("group %s: offset commit skipped: %s", self._spec.group_id, exc)


def _names(parts) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(parts or ()))


_MEMBER: GroupMember | None = None


def register_member(member: GroupMember | None) -> None:
    """Make ``member`` this process's group member, through which the committer of a
    pipeline run in this process commits Kafka offsets (None: no member)."""
    global _MEMBER
    _MEMBER = member


def registered_member() -> GroupMember | None:
    return _MEMBER
