"""The agent's settings and command line: sources, validation, and clear start-up failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.unit.readonly import read_only_dir
from tieredkv_agent.config import AgentSettings

pytestmark = pytest.mark.unit


def agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDKV_")}
    here = [str(Path(__file__).resolve().parents[2] / d) for d in ("operator", "agent", "common")]
    clean["PYTHONPATH"] = os.pathsep.join([*here, clean.get("PYTHONPATH", "")])  # this checkout's code
    return subprocess.run(
        [sys.executable, "-m", "tieredkv_agent.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_read_the_variables_the_operator_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIEREDKV_READ_THREADS", "3")
    monkeypatch.setenv("TIEREDKV_MAX_BYTES", "1000")
    monkeypatch.setenv("TIEREDKV_STORE_DIR", "/x")
    s = AgentSettings()
    assert (s.read_threads, s.max_bytes, s.store_dir) == (3, 1000, Path("/x"))


def test_environment_variables_override_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("read_threads: 5\nwrite_threads: 6\n")
    monkeypatch.setenv("TIEREDKV_CONFIG_FILE", str(config))
    monkeypatch.setenv("TIEREDKV_WRITE_THREADS", "7")
    s = AgentSettings()
    assert (s.read_threads, s.write_threads) == (5, 7)


def test_unknown_or_invalid_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"read_thread": 5}))
    monkeypatch.setenv("TIEREDKV_CONFIG_FILE", str(config))
    with pytest.raises(ValueError, match="read_thread"):
        AgentSettings()


def test_run_exits_non_zero_naming_a_store_directory_that_does_not_exist(tmp_path: Path) -> None:
    result = agent("run", TIEREDKV_STORE_DIR=str(tmp_path / "absent"), TIEREDKV_METRICS_PORT="0")
    assert result.returncode == 1
    assert "store directory" in result.stderr and "does not exist" in result.stderr


def test_run_exits_non_zero_when_the_store_directory_is_not_writable(tmp_path: Path) -> None:
    with read_only_dir(tmp_path / "ro") as store:
        result = agent("run", TIEREDKV_STORE_DIR=str(store), TIEREDKV_METRICS_PORT="0")
    assert result.returncode == 1
    assert "not writable" in result.stderr


def test_invalid_settings_exit_2_with_the_field_named(tmp_path: Path) -> None:
    result = agent("run", TIEREDKV_STORE_DIR=str(tmp_path), TIEREDKV_HIGH_WATERMARK="0.5")
    assert result.returncode == 2 and "low_watermark" in result.stderr


def test_gc_reports_what_it_would_evict_without_deleting(tmp_path: Path) -> None:
    block = tmp_path / "m_0123456789ab_r0" / "abc" / "de_g0" / ("abcde" + "0" * 59 + ".bin")
    block.parent.mkdir(parents=True)
    block.write_bytes(b"x" * 4096)
    os.utime(block, (1, 1))
    result = agent(
        "gc",
        TIEREDKV_STORE_DIR=str(tmp_path),
        TIEREDKV_MAX_BYTES="4096",
        TIEREDKV_HIGH_WATERMARK="0.5",
        TIEREDKV_LOW_WATERMARK="0.1",
        TIEREDKV_GC_GRACE_SECONDS="0",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["evicted"] == {"files": 1, "bytes": 4096}
    assert block.exists(), "a dry run deletes nothing"


def test_inspect_prints_usage_per_namespace_directory(tmp_path: Path) -> None:
    (tmp_path / "m_0123456789ab").mkdir()
    (tmp_path / "m_0123456789ab" / "config.json").write_text('{"model": "m"}')
    result = agent("inspect", TIEREDKV_STORE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["root"] == str(tmp_path)


def test_the_expected_fingerprint_follows_the_seed_algorithm_and_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tieredkv_agent.api.protocol import none_hash_fingerprint
    from tieredkv_agent.service import expected_fingerprint
    from tieredkv_agent.store.hashing import HashAlgo, none_hash

    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    s = AgentSettings(vllm_version="0.33", hash_algo="sha256")
    assert expected_fingerprint(s) == none_hash_fingerprint(none_hash(HashAlgo.SHA256, "1234"))
    assert expected_fingerprint(
        AgentSettings(vllm_version="0.33", hash_algo="xxhash")
    ) != expected_fingerprint(s)
    monkeypatch.setenv("PYTHONHASHSEED", "1235")
    assert expected_fingerprint(s) != none_hash_fingerprint(none_hash(HashAlgo.SHA256, "1234"))
    assert expected_fingerprint(AgentSettings(vllm_version="")) is None, "no line: nothing to check against"


def test_install_plugin_puts_the_plugin_its_line_table_and_its_entry_point_on_a_pythonpath(
    tmp_path: Path,
) -> None:
    cli = [sys.executable, "-m", "tieredkv_agent.cli", "install-plugin", str(tmp_path / "plugin")]
    subprocess.run(cli, check=True, capture_output=True)
    probe = (
        "import sys, importlib.metadata as m, tieredkv_agent.vllm as v, tieredkv_common.vllm_lines as t\n"
        "found = m.distributions(path=[sys.argv[1]])  # the plugin directory alone\n"
        "points = [p.value for d in found for p in d.entry_points if p.group == 'vllm.general_plugins']\n"
        "print(v.__file__, t.__file__, 'tieredkv_agent.vllm:register' in points, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugin")}
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "plugin")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    path, table_path, has_entry_point, torch_loaded = done.stdout.split()
    assert path.startswith(str(tmp_path / "plugin")) and table_path.startswith(str(tmp_path / "plugin"))
    assert has_entry_point == "True" and torch_loaded == "False"


def test_run_help_lists_every_setting_with_its_variable_and_meaning() -> None:
    done = agent("run", "--help")
    assert done.returncode == 0
    for name, field in AgentSettings.model_fields.items():
        line = next((ln for ln in done.stdout.splitlines() if f"TIEREDKV_{name.upper()} " in ln), None)
        assert line is not None, f"TIEREDKV_{name.upper()} missing from run --help"
        assert field.description and field.description.split("\n")[0] in line


def test_run_with_its_metrics_port_taken_exits_1_naming_the_port_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = agent(
            "run",
            TIEREDKV_STORE_DIR=str(tmp_path),
            TIEREDKV_SOCKET_DIR=str(tmp_path / "sock"),
            TIEREDKV_POD_IP="127.0.0.1",
            TIEREDKV_METRICS_PORT=str(port),
        )
    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "TIEREDKV_METRICS_PORT" in done.stderr and "Traceback" not in done.stderr


def without_torch(tmp_path: Path) -> str:
    """A PYTHONPATH entry whose sitecustomize makes `import torch` fail, as on a machine without it."""
    site = tmp_path / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    return str(site)


def test_torch_is_an_extra_not_a_dependency_of_the_distribution() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("torch")]
    assert project["optional-dependencies"]["torch"] == ["torch==2.13.0"]


def test_the_operator_the_plugin_and_the_file_tier_agent_import_without_torch(tmp_path: Path) -> None:
    probe = (
        "import tieredkv_operator.cli, tieredkv_operator.handlers, tieredkv_agent.vllm.tier, "
        "tieredkv_agent.service, tieredkv_agent.tiers.file; print('imported')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([without_torch(tmp_path), *sys.path])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_a_ram_tier_without_torch_ends_start_up_naming_the_extra(tmp_path: Path) -> None:
    done = agent(
        "run",
        PYTHONPATH=without_torch(tmp_path),
        TIEREDKV_MODE="agent",
        TIEREDKV_STORE_DIR=str(tmp_path),
        TIEREDKV_SOCKET_DIR=str(tmp_path / "sock"),
        TIEREDKV_RAM_TIER_BYTES=str(1 << 20),
        TIEREDKV_METRICS_PORT="0",
    )
    assert done.returncode == 1
    assert "tieredkv[torch]" in done.stderr and "Traceback" not in done.stderr
