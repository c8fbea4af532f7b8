"""Command line of the node agent process (`tieredkv-agent`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tieredkv_agent import __version__

if TYPE_CHECKING:
    from tieredkv_agent.config import AgentSettings

log = logging.getLogger("tieredkv_agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tieredkv-agent",
        description="Run the tieredkv node agent: shared-volume block I/O, node RAM tier and capacity GC.",
        epilog="Settings come from TIEREDKV_* environment variables and the file given by --config.",
    )
    parser.add_argument("--version", action="version", version=f"tieredkv-agent {__version__}")
    parser.add_argument("--config", type=Path, help="YAML or JSON settings file (TIEREDKV_CONFIG_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="serve until SIGTERM: metrics, GC leader election and GC passes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_settings_epilog(),
    )
    gc = sub.add_parser("gc", help="one GC pass over the store directory (what would be evicted, by default)")
    mode = gc.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=True, help="report only (the default)")
    mode.add_argument(
        "--apply", action="store_true", help="really delete; only while no agent is GC leader for this volume"
    )
    sub.add_parser("inspect", help="usage per namespace directory and the compat profile of each (JSON)")
    install = sub.add_parser(
        "install-plugin", help="copy the vLLM tier plugin into DIR (for an init container)"
    )
    install.add_argument("dir", type=Path, help="directory to put on the vLLM container's PYTHONPATH")
    sub.add_parser(
        "csi",
        help="serve the CSI node plugin that mounts caches' socket directories into pods (TIEREDKV_CSI_*)",
    )
    return parser


def _settings_epilog() -> str:
    """The settings `run` reads, from the settings model itself (so the list cannot go stale)."""
    from tieredkv_agent.config import AgentSettings

    header = f"  {'variable':<43} {'default':<26} meaning"
    return "\n".join(
        [
            "settings (environment variables; the same names in lower case, without TIEREDKV_, in --config):",
            header,
            *AgentSettings.help_lines(),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("install-plugin", "csi"):  # neither reads AgentSettings
        return _install_plugin(args.dir) if args.command == "install-plugin" else _csi()
    if args.config is not None:
        os.environ["TIEREDKV_CONFIG_FILE"] = str(args.config)
    from tieredkv_agent.config import AgentSettings
    from tieredkv_agent.service import StartupError

    try:
        settings = AgentSettings()
        if args.command == "run":
            return _run(settings)
        if args.command == "gc":
            return _gc(settings, apply=args.apply)
        return _inspect(settings)
    except ValidationError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    except StartupError as exc:
        log.error("%s", exc)
        return 1


def _run(settings: AgentSettings) -> int:
    from tieredkv_agent import service

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.serve(settings, stop)
    return 0


def _csi() -> int:
    """The CSI node plugin process: its own settings (TIEREDKV_CSI_*), no store and no cache."""
    from tieredkv_agent.csi.server import serve_csi
    from tieredkv_agent.csi.settings import CsiSettings

    try:
        settings = CsiSettings()
    except ValidationError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_csi(settings, __version__, stop)
    return 0


def _gc(settings: AgentSettings, *, apply: bool) -> int:
    from tieredkv_agent import service

    service.check_store_dir(settings)
    report = service.capacity_manager(settings, None).run_pass(dry_run=not apply)
    print(json.dumps(report.summary(), indent=2, default=str))
    return 0


def _inspect(settings: AgentSettings) -> int:
    from tieredkv_agent.capacity import inspect_volume

    print(json.dumps(inspect_volume(settings.store_dir).as_dict(), indent=2, default=str))
    return 0


def _install_plugin(target: Path) -> int:
    """Copy the packages the vLLM tier plugin runs from into `target`: tieredkv_agent (the plugin and its
    socket client) and tieredkv_common (the vLLM line table the plugin reads)."""
    import tieredkv_common

    for source in (Path(__file__).resolve().parent, Path(tieredkv_common.__file__).resolve().parent):
        dest = target / source.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        log.info("installed %s into %s", source.name, target)
    _write_entry_point(target)
    return 0


def _write_entry_point(target: Path) -> None:
    """A minimal distribution record so vLLM's plugin loader finds `tieredkv` on PYTHONPATH.

    Releases that cannot load a tier by `module_path` know only registered tier types; vLLM loads
    `vllm.general_plugins` entry points in every process, and ours registers the type `tieredkv`.
    """
    info = target / "tieredkv_plugin-0.0.0.dist-info"
    shutil.rmtree(info, ignore_errors=True)
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tieredkv-plugin\nVersion: 0.0.0\n")
    entry = "[vllm.general_plugins]\ntieredkv = tieredkv_agent.vllm:register\n"
    (info / "entry_points.txt").write_text(entry)


if __name__ == "__main__":
    sys.exit(main())
