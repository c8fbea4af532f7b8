"""Build the bench's preloadable shims with gcc into a cache directory outside the repository.

`delay_shim()` returns the path of bench/shim/delayio.c compiled (once per source digest) into
~/.cache/tieredkv/bench-shims/: the slow-volume latency injector of bench/vllm_fs_io.py.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "shim" / "delayio.c"
CACHE = Path.home() / ".cache" / "tieredkv" / "bench-shims"


def delay_shim() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    target = CACHE / f"delayio-{digest}.so"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"], check=True
        )
        tmp.rename(target)
    return target
