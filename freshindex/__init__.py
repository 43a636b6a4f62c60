"""freshindex: keep an AI knowledge index fresh.

The packages beside this one hold the data plane: ``schemas`` (contracts between
stages and the pinned table schemas), ``transforms`` (one Beam PTransform per
verb) and ``pipelines`` (batch and streaming compositions of those transforms).
This package holds what they share: configuration, errors, the LanceDB store,
the embedding runtime and the CLI.
"""

__version__ = "0.1.0"
