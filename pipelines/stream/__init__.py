"""Streaming updates: Kafka topics -> the versioned LanceDB chunks table, one commit per
micro-batch (docs/STREAMING.md).

- ``config``: ``StreamConfig`` (how the stream reads and batches) and ``StreamRun``.
- ``offsets``: partition positions, contiguous reads, micro-batch cuts; pure.
- ``microbatch``: ``BatchIndexer``, one micro-batch from records to committed offsets,
  over the batch pipeline's processing path (``freshindex.transforms.process``).
- ``step``: the stateful Beam step that applies micro-batches in order; ``build_stream``.
- ``run``: ``run_stream``, the run's summary row, signals, the runner; ``main``.

The names below are the package's API; ``python -m freshindex.pipelines.stream`` runs
``run.main``.
"""

from freshindex.pipelines.stream.config import (
    DEFAULT_BOOTSTRAP,
    StreamConfig,
    StreamRun,
    stream_config,
    stream_config_from_flags,
)
from freshindex.pipelines.stream.microbatch import BatchIndexer, BatchStats
from freshindex.pipelines.stream.offsets import (
    Progress,
    batch_due,
    initial_progress,
    split_batches,
    take_contiguous,
)
from freshindex.pipelines.stream.run import (
    finish_run,
    format_stream_summary,
    main,
    run_stream,
)
from freshindex.pipelines.stream.step import IndexMicroBatches, build_stream

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "BatchIndexer",
    "BatchStats",
    "IndexMicroBatches",
    "Progress",
    "StreamConfig",
    "StreamRun",
    "batch_due",
    "build_stream",
    "finish_run",
    "format_stream_summary",
    "initial_progress",
    "main",
    "run_stream",
    "split_batches",
    "stream_config",
    "stream_config_from_flags",
    "take_contiguous",
]
