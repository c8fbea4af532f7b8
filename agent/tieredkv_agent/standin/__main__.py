"""`python -m tieredkv_agent.standin`: run a stand-in engine against the tier vLLM would be given.

The tier comes from the same `--kv-transfer-config` JSON the operator renders for vLLM pods (argument or
`$TIEREDKV_KV_TRANSFER_CONFIG`; in a pod, the cache's ConfigMap `tieredkv-<name>-vllm`, which the pod passes
on itself: the webhook does not take the stand-in for vLLM and leaves its command alone when the pod is
annotated `tieredkv.io/kv-transfer-config: env`): its `secondary_tiers[0]` entry is built as vLLM's factory
builds it. Each
`--prompt SEED:TOKENS` is one request of a reproducible prompt; prompts sharing a seed share a prefix.
Prints one JSON line per request, then a summary line; exit status 0 iff every loaded block had the
right bytes and no job was lost. `--hold` keeps the engine (and its connection) up until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tieredkv_agent.standin.driver import Driver, Outcome
from tieredkv_agent.standin.engine import block_content, build_tier, engine_spec, prompt, request_keys
from tieredkv_agent.standin.region import SharedRegion

log = logging.getLogger("tieredkv_agent.standin")


def tier_entry(kv_transfer_config: str) -> dict[str, Any]:
    """The first secondary tier of a `--kv-transfer-config` JSON text."""
    config = json.loads(kv_transfer_config)
    tiers = config.get("kv_connector_extra_config", {}).get("secondary_tiers") or []
    if not tiers:
        raise ValueError("the kv-transfer-config has no kv_connector_extra_config.secondary_tiers")
    return dict(tiers[0])


def parse_prompt(text: str) -> tuple[int, int]:
    seed, _, tokens = text.partition(":")
    return int(seed), int(tokens or 256)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tieredkv_agent.standin", description=__doc__)
    parser.add_argument("--kv-transfer-config", default=os.environ.get("TIEREDKV_KV_TRANSFER_CONFIG", ""))
    parser.add_argument("--engine-id", default=f"{os.uname().nodename}-{os.getpid()}")
    parser.add_argument("--block-bytes", type=int, default=64 * 1024, help="bytes per chunk slot (row)")
    parser.add_argument("--chunks", type=int, default=256, help="slots in the CPU region")
    parser.add_argument("--prompt", action="append", default=[], metavar="SEED:TOKENS")
    parser.add_argument("--repeat", type=int, default=1, help="serve the prompt list this many times")
    parser.add_argument("--vllm-version", default="0.33.0")
    parser.add_argument("--hold", action="store_true", help="stay up (connected) until SIGTERM")
    parser.add_argument("--wait-agent-s", type=float, default=30.0, help="wait this long for the agent first")
    parser.add_argument(
        "--hash-seed",
        default=None,
        help="derive NONE_HASH from this seed instead of $PYTHONHASHSEED: an engine whose seed differs in a "
        "way the webhook cannot see (the demo's seed-mismatch scenario)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    entry = tier_entry(args.kv_transfer_config)
    environ = dict(os.environ) if args.hash_seed is None else {**os.environ, "PYTHONHASHSEED": args.hash_seed}
    spec = engine_spec(vllm_version=args.vllm_version, environ=environ)
    region = SharedRegion(args.engine_id, args.chunks, args.block_bytes)
    tier = build_tier(entry, spec, region.view)
    total = Outcome("total", 0)
    try:
        _wait_for_agent(tier, args.wait_agent_s)
        driver = Driver(tier, region, lambda key: block_content(key, args.block_bytes))
        for round_ in range(args.repeat):
            for index, text in enumerate(args.prompt):
                seed, tokens = parse_prompt(text)
                keys = request_keys(spec, prompt(seed, tokens))
                outcome = driver.run_request(f"{args.engine_id}-{round_}-{index}", keys)
                print(json.dumps({**asdict(outcome), "mismatched": len(outcome.mismatched)}), flush=True)
                _add(total, outcome)
        driver.reset()
        print(json.dumps({**asdict(total), "mismatched": len(total.mismatched), "summary": True}), flush=True)
        if args.hold:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
    finally:
        tier.shutdown()
        region.close()
    return 0 if not total.mismatched else 1


def _wait_for_agent(tier: Any, timeout_s: float) -> None:
    """Give the tier's link to the agent a moment, as a real engine warms up before traffic."""
    link = getattr(tier, "link", None)
    deadline = time.monotonic() + timeout_s
    while link is not None and link.client() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if link is not None and link.client() is None:
        log.warning("no agent connection after %.0f s (%s); serving without it", timeout_s, link.last_error)


def _add(total: Outcome, outcome: Outcome) -> None:
    for name in ("blocks", "loaded", "computed", "stored", "failed_loads", "failed_stores", "steps"):
        setattr(total, name, getattr(total, name) + getattr(outcome, name))
    total.mismatched.extend(outcome.mismatched)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(build_parser().parse_args(argv))
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
