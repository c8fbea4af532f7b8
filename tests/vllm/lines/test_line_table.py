"""The line table's row for the vLLM line on the path agrees with that line's own code."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
from vllm.v1.kv_offload.tiering import base

from tests.vllm.lines.conftest import LINE
from tieredkv_agent.vllm import compat
from tieredkv_common.vllm_lines import vllm_line

pytestmark = pytest.mark.vllm


def test_the_plugin_uses_the_row_of_the_installed_line() -> None:
    assert compat.LINE.line == LINE
    assert not compat.JOB_RESULT_MISMATCH


def test_the_tier_api_row_matches_vllms_tiering_base() -> None:
    api = vllm_line(LINE).tier_api
    assert tuple(f.name for f in dataclasses.fields(base.JobResult)) == api.job_result_fields
    assert api.job_slot_field in {f.name for f in dataclasses.fields(base.TransferJob)}
    assert hasattr(base.SecondaryTierManager, "touch") is api.touch
    assert hasattr(base.SecondaryTierManager, api.finished_jobs_method)
    init = inspect.signature(base.SecondaryTierManager.__init__).parameters
    assert ("backpressure_detector" in init) is api.backpressure_detector
    context = base.RequestOffloadingContext()
    assert context.policy.name == api.default_offload_policy
    try:
        importlib.import_module("vllm.v1.kv_offload.tiering.async_lookup")
        found = True
    except ImportError:
        found = False
    assert found is api.async_lookup_manager


def test_the_fs_tier_type_the_operator_renders_is_registered_by_vllm() -> None:
    from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

    assert vllm_line(LINE).fs_tier_type in SecondaryTierFactory._registry
