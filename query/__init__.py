"""The query layer: retrieval over a pinned table version (model gateway and agents build on it)."""
