"""`tieredkv-agent inspect`: what is on a cache volume, per namespace, with each one's config.json.

Read-only; called from the CLI's main thread (the scan fans out to its own small thread pool).
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tieredkv_agent.capacity import layout
from tieredkv_agent.capacity.scan import Cutoffs, Usage, scan_volume


@dataclass(frozen=True, slots=True)
class NamespaceReport:
    """One `<model>_<digest12>` namespace: its blocks directories, usage and parsed config.json."""

    name: str
    blocks_dirs: list[str]
    usage: Usage
    config: dict[str, object] | None
    """The parsed config.json; None if it is missing or unreadable (see `config_error`)."""
    config_error: str | None


@dataclass(frozen=True, slots=True)
class InspectReport:
    root: str
    namespaces: list[NamespaceReport]
    files: int
    bytes: int
    unknown: list[str] = field(default_factory=list)
    unknown_count: int = 0
    errors: list[str] = field(default_factory=list)
    scan_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (the CLI prints it)."""
        return asdict(self)


def inspect_volume(
    root: str | os.PathLike[str], *, threads: int = 4, max_reported: int = 100
) -> InspectReport:
    """Usage per namespace directory and its config.json, plus unknown entries (CLI main thread)."""
    scan = scan_volume(root, Cutoffs.at(time.time(), 0, 0), threads=threads, max_reported=max_reported)
    namespaces = []
    for name in sorted(scan.usage):
        config, error = _read_config(Path(scan.root, name, layout.CONFIG_FILE_NAME))
        if name not in scan.config_dirs:
            config, error = None, "no config directory"
        blocks_dirs = sorted(scan.blocks_dirs.get(name, []))
        namespaces.append(NamespaceReport(name, blocks_dirs, scan.usage[name], config, error))
    return InspectReport(
        scan.root,
        namespaces,
        scan.files,
        scan.bytes,
        list(scan.unknown),
        scan.unknown_count,
        list(scan.errors),
        scan.duration_s,
    )


def _read_config(path: Path) -> tuple[dict[str, object] | None, str | None]:
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "config.json missing"
    except (OSError, ValueError) as exc:
        return None, f"config.json unreadable: {exc}"
    if not isinstance(parsed, dict):
        return None, "config.json is not a JSON object"
    return parsed, None
