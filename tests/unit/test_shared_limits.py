"""The agent and the operator's model take their bounds from one module: what one refuses, both refuse."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from tieredkv_agent.config import AgentSettings
from tieredkv_operator.spec import AgentSpec, CapacitySpec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("setting", "model", "field", "value"),
    [
        ("low_watermark", CapacitySpec, "lowWatermark", 0),
        ("high_watermark", CapacitySpec, "highWatermark", 1.5),
        ("max_bytes", CapacitySpec, "maxBytes", 0),
        ("read_threads", AgentSpec, "readThreads", 0),
        ("write_threads", AgentSpec, "writeThreads", 1025),
    ],
)
def test_a_value_the_agent_refuses_is_refused_by_the_cache_model_too(
    setting: str, model: type[BaseModel], field: str, value: float
) -> None:
    with pytest.raises(ValidationError):
        AgentSettings(**{setting: value})
    with pytest.raises(ValidationError):
        model.model_validate({field: value})
