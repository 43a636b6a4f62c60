"""Model providers behind one interface (``base.Provider``); ``build_provider`` makes one from
its config entry. ``extractive`` needs no weights beyond the embedding model;
``openai-compatible`` speaks chat completions over HTTP."""

from freshindex.query.providers.base import Provider, build_provider

__all__ = ["Provider", "build_provider"]
