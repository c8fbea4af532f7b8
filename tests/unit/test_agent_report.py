"""The agent's mismatch reporter: what it patches, how often, and that a failing API loses nothing."""

import threading
import time
from typing import Any

import pytest

from tieredkv_agent.report import MismatchReporter, status_patch

pytestmark = pytest.mark.unit


def test_the_patch_names_the_node_the_instance_and_both_fingerprints() -> None:
    from tieredkv_agent.report import Mismatch

    patch = status_patch("node-1", Mismatch("pod/1-x", "aa" * 8, "bb" * 8, "reject", 0.0), 2)
    assert patch == {
        "status": {
            "profileMismatches": {
                "node-1": {
                    "instance": "pod/1-x",
                    "offeredFingerprint": "aa" * 8,
                    "expectedFingerprint": "bb" * 8,
                    "action": "reject",
                    "count": 2,
                    "lastSeen": "1970-01-01T00:00:00Z",
                }
            }
        }
    }


def test_a_burst_of_mismatches_is_coalesced_and_a_failed_patch_is_retried() -> None:
    written: list[dict[str, Any]] = []
    failures = [RuntimeError("api away")]
    done = threading.Event()

    def patch(body: dict[str, Any]) -> None:
        if failures:
            raise failures.pop()
        written.append(body)
        done.set()

    reporter = MismatchReporter("node-1", patch, min_interval_s=0.05)
    for n in range(20):
        reporter.record(f"pod/{n}", "aa" * 8, "bb" * 8, "warn")
    assert done.wait(5.0)
    time.sleep(0.2)
    reporter.stop()
    last = written[-1]["status"]["profileMismatches"]["node-1"]
    assert len(written) <= 2 and last["count"] == 20 and last["instance"] == "pod/19"
