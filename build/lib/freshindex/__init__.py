"""freshindex: keep an AI knowledge index fresh.

One importable namespace. The data plane lives in ``freshindex.schemas`` (contracts
between stages and the pinned table schemas), ``freshindex.transforms`` (one Beam
PTransform per verb) and ``freshindex.pipelines`` (batch and streaming compositions of
those transforms); the query plane in ``freshindex.query``; the shipped configuration in
``freshindex.configs``. This package's own modules hold what they share (settings, errors,
the LanceDB store, the embedding runtime) and the operator commands (CLI, upkeep,
evaluation). The floors and which may import which: docs/ARCHITECTURE.md.
"""

from pathlib import Path

__version__ = "0.1.0"

# In a source checkout the mapped folders (schemas/, transforms/, pipelines/, query/,
# configs/) stand beside this package, at the top of the repository, as the project's
# layout asks; pyproject.toml maps them into this namespace for a wheel. Searching the
# checkout's root as well makes ``freshindex.schemas`` resolve the same way with or without
# an install. An installed wheel has them inside the package and no pyproject.toml beside.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "schemas" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))
