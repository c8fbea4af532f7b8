"""Profiling hooks for `bench/operator_latency.py --profile`, loaded by the operator's interpreter only.

The bench puts this directory first on the operator's PYTHONPATH and sets TIEREDKV_BENCH_PROFILE_OUT. In
the `tieredkv-operator` process it then records, until exit: the webhook server's time per request
(`post`: body read to answer written; `dispatch`: the decision), how late a 1 ms sleep on a thread of
its own wakes up (`stall`: the process stopped or the GIL held elsewhere), and each garbage collection's
duration by generation; percentiles in ms go to the JSON file at exit.
"""

import atexit
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

OUT = os.environ.get("TIEREDKV_BENCH_PROFILE_OUT")
SAMPLES: dict[str, list[float]] = {"post": [], "dispatch": [], "stall": [], "gc0": [], "gc1": [], "gc2": []}


def _patch_webhook_server() -> None:
    """Wrap the server's request handling once its module is imported (polls: no import hooks)."""
    while "tieredkv_operator.webhook_server" not in sys.modules:
        time.sleep(0.005)
    server = sys.modules["tieredkv_operator.webhook_server"]
    handle, init = server._Handler.do_POST, server.AdmissionServer.__init__

    def do_post(self: Any) -> None:
        started = time.perf_counter()
        handle(self)
        SAMPLES["post"].append(time.perf_counter() - started)

    def timed_init(self: Any, addr: str, port: int, dispatch: Any, context: Any) -> None:
        def timed(webhook: str, review: Any) -> Any:
            started = time.perf_counter()
            try:
                return dispatch(webhook, review)
            finally:
                SAMPLES["dispatch"].append(time.perf_counter() - started)

        init(self, addr, port, timed, context)

    server._Handler.do_POST = do_post
    server.AdmissionServer.__init__ = timed_init


def _stalls() -> None:
    while True:
        started = time.perf_counter()
        time.sleep(0.001)
        SAMPLES["stall"].append(time.perf_counter() - started - 0.001)


_gc_started: list[float] = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        SAMPLES[f"gc{info['generation']}"].append(time.perf_counter() - _gc_started[0])


def _dump() -> None:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))], 2)

    out = {
        name: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0), "sum": 1000 * sum(v)}
        for name, v in SAMPLES.items()
        if v
    }
    Path(str(OUT)).write_text(json.dumps(out, indent=2), encoding="utf-8")


if OUT and any(arg.endswith("tieredkv-operator") for arg in getattr(sys, "orig_argv", [])):
    threading.Thread(target=_patch_webhook_server, name="bench-profile-patch", daemon=True).start()
    threading.Thread(target=_stalls, name="bench-profile-stalls", daemon=True).start()
    gc.callbacks.append(_on_gc)
    atexit.register(_dump)
