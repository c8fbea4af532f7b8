"""Command line of the operator process (`tieredkv-operator`)."""

import argparse
import sys
from collections.abc import Sequence

from tieredkv_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tieredkv-operator",
        description="Run the tieredkv operator: reconcile TieredKVCache objects and serve the pod webhook.",
    )
    parser.add_argument("--version", action="version", version=f"tieredkv-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator until SIGTERM")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    run.add_argument("--standalone", action="store_true", help="no peering: act even if other operators run")
    run.add_argument("--liveness", default="", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first


def _run(args: argparse.Namespace) -> int:
    import kopf

    from tieredkv_operator import handlers  # importing registers the handlers

    if handlers.SETTINGS.webhook_enabled:
        from tieredkv_operator import webhooks

        webhooks.WATCHED_NAMESPACES.update(args.namespace)

    kopf.configure(verbose=False)
    namespaces: list[str] = args.namespace
    kopf.run(
        standalone=args.standalone,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
