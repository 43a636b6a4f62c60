"""The shipped configuration (``default.yaml``, ``query.yaml``, ``prompts/``), installed as
package data of ``freshindex.configs`` so that an installed wheel has its defaults."""
