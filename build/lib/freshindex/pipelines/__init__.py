"""Pipelines compose transforms; they hold no parsing, chunking or embedding logic of their own."""
