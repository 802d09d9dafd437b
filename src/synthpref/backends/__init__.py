"""Backends, grouped by kind. Each is one file, imported only when selected."""
