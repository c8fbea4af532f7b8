"""The store reuse filter: counting once per request, threshold, bounded LRU tracker."""

import threading

import pytest

from tieredkv_agent.engine.admission import AdmissionFilter

pytestmark = pytest.mark.unit


def test_admission_is_off_by_default_and_admits_everything() -> None:
    admission = AdmissionFilter()
    admission.observe("r1", [b"a", b"b"])
    assert not admission.enabled
    assert admission.admit([b"a", b"z"]) == [True, True]
    assert admission.stats().tracked_keys == 0


def test_a_key_counts_once_per_request_however_often_that_request_asks() -> None:
    admission = AdmissionFilter(threshold=2)
    for _ in range(10):
        admission.observe("r1", [b"a"])
    assert admission.requests_seen(b"a") == 1
    assert admission.admit([b"a"]) == [False]
    admission.observe("r2", [b"a"])
    assert admission.admit([b"a"]) == [True]


def test_interleaved_requests_are_still_counted_once_each() -> None:
    admission = AdmissionFilter(threshold=3)
    for request in ("r1", "r2", "r1", "r2", "r1"):
        admission.observe(request, [b"k"])
    assert admission.requests_seen(b"k") == 2
    assert admission.admit([b"k"]) == [False]
    admission.observe("r3", [b"k"])
    assert admission.admit([b"k"]) == [True]


def test_threshold_one_admits_anything_asked_for_once() -> None:
    admission = AdmissionFilter(threshold=1)
    admission.observe("r1", [b"a"])
    assert admission.admit([b"a", b"never-asked"]) == [True, False]


def test_decisions_are_counted() -> None:
    admission = AdmissionFilter(threshold=1)
    admission.observe("r1", [b"a"])
    admission.admit([b"a", b"b", b"c"])
    stats = admission.stats()
    assert (stats.admitted, stats.denied) == (1, 2)


def test_the_tracker_is_a_bounded_lru() -> None:
    admission = AdmissionFilter(threshold=2, max_tracker_size=100)
    admission.observe("r1", [b"old", b"kept"])
    admission.observe("r1", [i.to_bytes(4, "big") for i in range(98)])
    admission.observe("r1", [b"kept"])
    admission.observe("r1", [b"new"])
    stats = admission.stats()
    assert (stats.tracked_keys, stats.evicted) == (100, 1)
    assert admission.requests_seen(b"old") == 0
    assert admission.requests_seen(b"kept") == 1


def test_admitted_keys_keep_no_request_ids() -> None:
    admission = AdmissionFilter(threshold=2)
    admission.observe("r1", [b"a"])
    admission.observe("r2", [b"a"])
    admission.observe("r3", [b"a"])
    assert admission.requests_seen(b"a") == 2
    assert admission.admit([b"a"]) == [True]


def test_concurrent_requests_count_exactly() -> None:
    admission = AdmissionFilter(threshold=16)
    keys = [i.to_bytes(4, "big") for i in range(200)]

    def request(name: str) -> None:
        for _ in range(5):
            admission.observe(name, keys)

    threads = [threading.Thread(target=request, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {admission.requests_seen(k) for k in keys} == {8}


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        AdmissionFilter(threshold=-1)
    with pytest.raises(ValueError, match="max_tracker_size"):
        AdmissionFilter(threshold=1, max_tracker_size=0)
