"""The vLLM release lines tieredkv renders a `--kv-transfer-config` for: the operator's view of the shared
table in `tieredkv_common.vllm_lines`, which the node agent and the tier plugin read too.

Two facts of a row decide the rendered config: `fs_tier_type` (the name vLLM registers its file-system tier
under: `fs_python` in 0.22, `fs` from 0.23 on) and `tier_module_path` (whether a secondary-tier entry may name
an out-of-tree class with `module_path`, from 0.28 on; older lines load our tier through a vLLM general
plugin that registers the tier type `tieredkv`). `spec.vllm.version` must name a row exactly.

Adding a line means adding a row to the shared table, a golden file per mode under
tests/unit/golden/vllm_config/ and a row in docs/configuration.md.
"""

from typing import Final

from tieredkv_common.vllm_lines import LINE_PATTERN, LINES, VllmLine, supported_lines, vllm_line

SUPPORTED_LINES: Final[dict[str, VllmLine]] = LINES
"""Every line a TieredKVCache may name, oldest first."""

__all__ = ["LINE_PATTERN", "SUPPORTED_LINES", "VllmLine", "supported_lines", "vllm_line"]
