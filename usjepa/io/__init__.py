"""File I/O shared by training, launching and evaluation: atomic writes, the run folder, checkpoint digests.

Imports nothing heavy (no torch at import time), so the config layer and the launcher can use it.
"""

from usjepa.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]
