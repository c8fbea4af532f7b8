"""tieredkv node agent: file-tier I/O, node RAM tier and capacity management for one shared cache."""

__version__ = "0.1.0"
