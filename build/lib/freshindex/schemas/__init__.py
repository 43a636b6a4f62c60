"""Contracts between stages (records.py) and the pinned LanceDB table schemas (tables.py)."""
