"""The agent's Prometheus metrics: one registry, names `tieredkv_<noun>_<unit>[_total]`, bounded labels.

Every metric the agent exports is declared here (docs/metrics.md is checked against this registry).
The HTTP endpoint is served by prometheus-client's own thread.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info, start_http_server

from tieredkv_agent import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

BUILD = Info("tieredkv_agent_build", "Version of the running tieredkv agent", registry=REGISTRY)
BUILD.info({"version": __version__})


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint on a daemon thread (called once, from the main thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
