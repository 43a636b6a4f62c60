"""Run ``freshindex`` with its batch run paused right after it took the run lock, for the
run-lock tests (a long run, made long on purpose and released when the test says so):

    python -m tests.holding GATE -- <the args of python -m freshindex.cli>

Once the run holds the table's run lock it creates ``GATE.held``, then waits until ``GATE``
exists before it reads the table and runs its pipeline. The pause is injected here, by
wrapping the real function, so production code holds no switch for it.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path


def hold_runs_at(gate: Path) -> None:
    from freshindex.pipelines import batch

    real = batch._run_locked

    @functools.wraps(real)
    def wrapped(*args, **kw):
        Path(f"{gate}.held").touch()
        while not gate.exists():
            time.sleep(0.05)
        return real(*args, **kw)

    batch._run_locked = wrapped


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit(__doc__)
    hold_runs_at(Path(argv[0]))
    from freshindex.cli import main as real_main

    return real_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
