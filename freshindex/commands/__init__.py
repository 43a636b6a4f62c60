"""Operator commands contributed to ``freshindex`` (the top floor): each module has
``register_cli(subparsers)`` and keeps heavy imports inside its command functions."""
