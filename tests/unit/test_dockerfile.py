"""The Dockerfile (which CI cannot build: no Docker daemon) names only paths and entry points that exist, is
multi-stage, runs as a non-root user, keeps build tools out of the final stage, and is tagged by the
chart's appVersion, which is the package's version."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from tieredkv_operator import __version__

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def test_it_is_multi_stage_and_the_final_stage_only_copies_from_the_build_stage() -> None:
    build, final = stages()
    assert build[0][1].endswith("AS build")
    copies = [args for op, args in final if op in ("COPY", "ADD")]
    assert copies and all(c.startswith("--from=build ") for c in copies)
    assert not [args for op, args in final if op == "RUN"], (
        "the final stage runs nothing (no package manager)"
    )


def test_every_path_it_copies_from_the_repository_exists_and_is_not_dockerignored() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for op, args in instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignored, f"{source} is excluded by .dockerignore"


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [args for op, args in stages()[-1] if op == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_no_compiler_or_build_tool_is_installed_in_any_stage() -> None:
    for op, args in instructions():
        if op == "RUN":
            assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|build-essential|make)\b", args), args


def test_its_commands_are_the_projects_console_scripts_and_their_subcommands() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    cmd = json.loads([args for op, args in instructions() if op == "CMD"][-1])
    assert cmd[0] in scripts
    mentioned = set(re.findall(r"(tieredkv-[a-z]+) ([a-z-]+)", DOCKERFILE))
    assert mentioned
    from tieredkv_agent import cli as agent_cli
    from tieredkv_operator import cli as operator_cli

    parsers = {"tieredkv-operator": operator_cli.build_parser(), "tieredkv-agent": agent_cli.build_parser()}
    for script, sub in mentioned:
        assert script in scripts, script
        actions = [a for a in parsers[script]._actions if a.dest == "command"]
        assert sub in actions[0].choices, f"{script} has no subcommand {sub}"
        module, _, func = scripts[script].partition(":")
        assert (ROOT / "operator" / module.replace(".", "/")).with_suffix(".py").exists() or (
            ROOT / "agent" / module.replace(".", "/")
        ).with_suffix(".py").exists(), module
        assert func == "main"


def test_the_image_tag_is_the_charts_app_version_which_is_the_package_version() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "tieredkv" / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"] == __version__
    assert f"ghcr.io/tieredkv/tieredkv:{chart['appVersion']}" in DOCKERFILE
