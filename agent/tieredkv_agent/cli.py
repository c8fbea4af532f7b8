"""Command line of the node agent process (`tieredkv-agent`)."""

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from tieredkv_agent import __version__

log = logging.getLogger("tieredkv_agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tieredkv-agent",
        description="Run the tieredkv node agent: shared-volume block I/O, node RAM tier and capacity GC.",
    )
    parser.add_argument("--version", action="version", version=f"tieredkv-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve until SIGTERM (skeleton: logs its start line and waits)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return _run()
    return 2  # pragma: no cover - argparse rejects unknown commands first


def _run() -> int:
    """Main thread: wait for SIGTERM/SIGINT; the serving parts arrive with the agent-core issue."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("tieredkv-agent %s started (skeleton: no tiers configured yet)", __version__)
    stop.wait()
    log.info("tieredkv-agent stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
