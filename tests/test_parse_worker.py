"""The stoppable worker process on its own: deadline, memory ceiling, crashes, reuse.

The functions it runs are defined here (module level, so the worker imports them by name);
they stand for a parser that hangs, allocates without bound, raises or dies.
"""

from __future__ import annotations

import os
import time

import pytest

from freshindex.transforms.parse_worker import (
    IsolatedWorker,
    RemoteError,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerTimeout,
)


def pid_and_echo(value):
    return os.getpid(), value


def sleep_for(seconds):
    time.sleep(seconds)
    return "woke"


def hold_memory(mb, seconds):
    block = b"x" * (mb * 1024 * 1024)  # written, so resident
    time.sleep(seconds)
    return len(block)


def raise_value_error(message):
    raise ValueError(message)


def die():
    os._exit(3)


@pytest.fixture
def worker():
    w = IsolatedWorker(pid_and_echo, timeout_s=30, max_memory_mb=100)
    yield w
    w.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_one_process_serves_every_call(worker):
    first_pid, value = worker.call({"a": 1})
    assert value == {"a": 1} and first_pid != os.getpid()
    for i in range(5):
        pid, value = worker.call(i)
        assert (pid, value) == (first_pid, i)
    assert worker.starts == 1


def test_a_call_past_the_deadline_is_killed_and_the_next_call_gets_a_fresh_process():
    with IsolatedWorker(sleep_for, timeout_s=0.5, max_memory_mb=100) as w:
        assert w.call(0) == "woke"
        stuck = w.pid
        started = time.monotonic()
        with pytest.raises(WorkerTimeout, match=r"longer than 0\.5s"):
            w.call(3600)
        assert time.monotonic() - started < 60  # liveness: the hour-long call was stopped
        assert not alive(stuck)
        assert w.call(0) == "woke" and w.pid != stuck and w.starts == 2


def test_a_call_over_the_memory_ceiling_is_killed():
    with IsolatedWorker(hold_memory, timeout_s=120, max_memory_mb=100) as w:
        assert w.call(10, 0) == 10 * 1024 * 1024
        pid = w.pid
        with pytest.raises(WorkerMemoryExceeded, match="ceiling of 100 MB"):
            w.call(400, 3600)
        assert not alive(pid)
        assert w.call(1, 0) == 1024 * 1024  # and the worker serves again


def test_an_allocation_past_the_address_space_cap_is_a_memory_error_not_a_crash():
    w = IsolatedWorker(hold_memory, timeout_s=120, max_memory_mb=100)
    # far past the backstop (2 ceilings + margin): the allocation itself fails at once
    with w, pytest.raises(WorkerMemoryExceeded, match="MemoryError"):
        w.call(4096, 0)


def test_an_exception_comes_back_by_name_and_the_process_stays():
    with IsolatedWorker(raise_value_error, timeout_s=30, max_memory_mb=100) as w:
        with pytest.raises(RemoteError) as err:
            w.call("bad input")
        assert (err.value.type_name, err.value.message) == ("ValueError", "bad input")
        pid = w.pid
        with pytest.raises(RemoteError):
            w.call("again")
        assert w.pid == pid and w.starts == 1


def test_a_dead_process_is_reported_and_replaced():
    with IsolatedWorker(die, timeout_s=30, max_memory_mb=100) as w:
        with pytest.raises(WorkerCrashed, match="exit code 3"):
            w.call()
        with pytest.raises(WorkerCrashed):
            w.call()
        assert w.starts == 2


def test_closing_the_worker_ends_its_process(worker):
    pid, _ = worker.call(None)
    worker.close()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def keep_memory(mb):
    kept.append(b"x" * (mb * 1024 * 1024))
    return os.getpid()


kept: list[bytes] = []  # in the worker process: what keep_memory holds on to


def test_memory_left_over_by_earlier_calls_never_counts_against_the_next_one():
    with IsolatedWorker(keep_memory, timeout_s=120, max_memory_mb=100) as w:
        first = w.call(60)
        assert w.call(60) == first  # each call adds 60 MB: under the ceiling
        # the worker now holds 120 MB more than when it started: replaced before the next
        # call instead of failing it
        assert w.call(60) != first and w.starts == 2
