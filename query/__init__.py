"""The query layer: retrieval over a pinned table version, the model gateway (model plane),
the agent loop (agent plane), and the HTTP API over one Python API
(``freshindex.query.service.QueryService``). See docs/QUERY.md."""
