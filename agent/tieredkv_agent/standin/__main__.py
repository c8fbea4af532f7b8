"""`python -m tieredkv_agent.standin`: run a stand-in engine against the tier vLLM would be given.

The tier comes from the same `--kv-transfer-config` JSON the operator injects into vLLM pods (argument
or `$TIEREDKV_KV_TRANSFER_CONFIG`): its `secondary_tiers[0]` entry is built as vLLM's factory builds it. Each
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
    return parser


def run(args: argparse.Namespace) -> int:
    entry = tier_entry(args.kv_transfer_config)
    spec = engine_spec(vllm_version=args.vllm_version)
    region = SharedRegion(args.engine_id, args.chunks, args.block_bytes)
    tier = build_tier(entry, spec, region.view)
    total = Outcome("total", 0)
    try:
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
