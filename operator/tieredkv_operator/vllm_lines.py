"""The vLLM release lines tieredkv renders a `--kv-transfer-config` for, and what differs between them.

A release line is "major.minor" (patch releases of a line share one config shape). Two facts decide the
rendered config:

* the name vLLM registers its file-system tier under: `fs_python` in 0.22, `fs` from 0.23 on;
* whether a secondary-tier entry may name an out-of-tree class with `module_path` (from 0.28 on). Older lines
  load our tier through a vLLM general plugin that registers the tier type `tieredkv`.

Adding a line means adding a row here, a golden file per mode under tests/unit/golden/vllm_config/ and a row
in docs/configuration.md.
"""

import re
from dataclasses import dataclass
from typing import Final

LINE_PATTERN: Final = r"^[0-9]+\.[0-9]+$"


@dataclass(frozen=True)
class VllmLine:
    """What one vLLM release line accepts in the parts of the config tieredkv renders."""

    line: str
    fs_tier_type: str
    """Registered type name of vLLM's own file-system tier."""
    tier_module_path: bool
    """True when a secondary-tier entry may carry `module_path` to load an out-of-tree tier class."""


def _line(line: str, *, fs_tier_type: str = "fs", tier_module_path: bool = True) -> VllmLine:
    return VllmLine(line=line, fs_tier_type=fs_tier_type, tier_module_path=tier_module_path)


SUPPORTED_LINES: Final[dict[str, VllmLine]] = {
    row.line: row
    for row in (
        _line("0.22", fs_tier_type="fs_python", tier_module_path=False),
        _line("0.23", tier_module_path=False),
        _line("0.24", tier_module_path=False),
        _line("0.25", tier_module_path=False),
        _line("0.26", tier_module_path=False),
        _line("0.27", tier_module_path=False),
        _line("0.28"),
        _line("0.29"),
        _line("0.30"),
        _line("0.31"),
        _line("0.32"),
        _line("0.33"),
    )
}


def supported_lines() -> tuple[str, ...]:
    """The supported release lines, oldest first."""
    return tuple(SUPPORTED_LINES)


def vllm_line(version: str) -> VllmLine:
    """Look a release line up; raise ValueError that lists the supported lines if it is unknown."""
    if not re.match(LINE_PATTERN, version):
        raise ValueError(
            f"vLLM version {version!r} is not a release line: give major.minor, e.g. "
            f"{supported_lines()[-1]!r} for any {supported_lines()[-1]}.x release"
        )
    try:
        return SUPPORTED_LINES[version]
    except KeyError:
        raise ValueError(
            f"vLLM release line {version!r} is not supported; supported lines: {', '.join(supported_lines())}"
        ) from None
