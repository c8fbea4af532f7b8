"""Command line of the operator process (`tieredkv-operator`)."""

import argparse
import sys
import time
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
    peers = run.add_mutually_exclusive_group()
    peers.add_argument(
        "--standalone", action="store_true", help="no peering: act even if other operators run"
    )
    peers.add_argument(
        "--peering",
        default="",
        metavar="NAME",
        help="kopf peering object to coordinate through: of its live members only the top priority acts "
        "(while the object does not exist, run alone)",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: the start time in seconds, so the newest operator acts)",
    )
    run.add_argument("--liveness", default="", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument(
        "--metrics", default="", metavar="HOST:PORT", help="serve /metrics here, e.g. 0.0.0.0:9401"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first


def _run(args: argparse.Namespace) -> int:
    import functools
    import gc

    import kopf

    from tieredkv_operator import handlers  # importing registers the handlers
    from tieredkv_operator.drift_loop import DriftLoop, Peering
    from tieredkv_operator.kube import shared
    from tieredkv_operator.memo import Context
    from tieredkv_operator.settings import OperatorSettings

    ctx = Context(settings=OperatorSettings(), watched_namespaces=frozenset(args.namespace))
    if ctx.settings.webhook_enabled:
        from tieredkv_operator import webhooks  # noqa: F401  (importing registers the webhooks)

    if args.metrics:
        from tieredkv_operator import metrics

        metrics.serve(args.metrics)
    kopf.configure(verbose=False)
    namespaces: list[str] = args.namespace
    settings = kopf.OperatorSettings()
    if args.peering:  # not kopf.run(peering_name=...): that makes the object mandatory
        settings.peering.name = args.peering
    priority = args.priority if args.priority is not None else int(time.time())
    drift = DriftLoop(
        shared,
        functools.partial(handlers.refresh_cache, ctx.settings),
        interval_s=ctx.settings.drift_interval_seconds,
        namespaces=namespaces,
        peering=None if args.standalone else Peering(settings.peering.name, priority),
    )
    drift.start()
    # Everything imported and built so far lives as long as the process: move it out of the cyclic
    # garbage collector's reach. Otherwise each full collection walks kopf's, the Kubernetes client's
    # and pydantic's objects, stopping every thread (the webhook's included) for 100-350 ms.
    gc.freeze()
    # What is built later (watch bodies, kopf's per-object state) still makes full collections of 30-100 ms
    # every few seconds at 50 pod creations/s: run them 10x less often (every 100 second-generation passes).
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
    try:
        kopf.run(
            settings=settings,
            standalone=args.standalone,
            priority=priority,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(context=ctx),
        )
    finally:
        drift.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
