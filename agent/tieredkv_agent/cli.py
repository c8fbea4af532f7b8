"""Command line of the node agent process (`tieredkv-agent`)."""

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tieredkv_agent import __version__

log = logging.getLogger("tieredkv_agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tieredkv-agent",
        description="Run the tieredkv node agent: shared-volume block I/O, node RAM tier and capacity GC.",
    )
    parser.add_argument("--version", action="version", version=f"tieredkv-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve until SIGTERM (metrics on $TIEREDKV_POD_IP:$TIEREDKV_METRICS_PORT)")
    install = sub.add_parser(
        "install-plugin", help="copy the vLLM tier plugin into DIR (for an init container)"
    )
    install.add_argument("dir", type=Path, help="directory to put on the vLLM container's PYTHONPATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return _run()
    if args.command == "install-plugin":
        return _install_plugin(args.dir)
    return 2  # pragma: no cover - argparse rejects unknown commands first


def _run() -> int:
    """Main thread: serve metrics and wait for SIGTERM; the data path comes with the agent-core issue."""
    from tieredkv_agent import metrics

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host = os.environ.get("TIEREDKV_POD_IP") or "0.0.0.0"
    port = int(os.environ.get("TIEREDKV_METRICS_PORT", "9400"))
    metrics.serve(host, port)
    log.info("tieredkv-agent %s started: metrics on %s:%d (no tiers configured yet)", __version__, host, port)
    stop.wait()
    log.info("tieredkv-agent stopping")
    return 0


def _install_plugin(target: Path) -> int:
    """Copy the tieredkv_agent package (the vLLM tier plugin and its socket client) into `target`."""
    source = Path(__file__).resolve().parent
    dest = target / source.name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    log.info("installed %s into %s", source.name, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
