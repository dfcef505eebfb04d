"""File I/O shared by training, launching and evaluation: atomic writes, the run folder, checkpoint digests, and
checkpoint / encoder files (`usjepa.io.checkpoints`: safe loading, exporting and reloading an encoder).

The package imports nothing heavy (no torch at import time), so the config layer and the launcher can use it;
`usjepa.io.checkpoints` loads torch and the encoder when it is imported.
"""

from usjepa.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]
