"""One verb, one transform: read, plan, parse, chunk, embed, write.

Each module exposes a ``beam.PTransform`` with labelled steps and a pure function that
does the work for one element, so the streaming pipeline and tests reuse both.
"""
