"""The tier registry: lazy import by type name, a clear error for unknown types."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tieredkv_agent.tiers import TIER_TYPES, Tier, UnknownTierTypeError, create_tier, tier_factory

pytestmark = pytest.mark.unit


def test_an_unknown_tier_type_fails_with_the_supported_types_listed() -> None:
    with pytest.raises(UnknownTierTypeError, match=r"unknown tier type 'fs'; supported types: file") as info:
        create_tier("fs", root_dir="/nowhere")
    assert info.value.supported == tuple(sorted(TIER_TYPES))
    assert isinstance(info.value, ValueError)


def test_the_file_tier_is_built_from_its_type_name(tmp_path: Path) -> None:
    tier = create_tier("file", root_dir=tmp_path / "volume", read_threads=1, write_threads=1)
    try:
        assert isinstance(tier, Tier)
        assert tier.tier_type == "file"
        assert type(tier) is tier_factory("file")
    finally:
        tier.shutdown(1.0)


def test_an_unknown_option_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="n_threads"):
        create_tier("file", root_dir=tmp_path, n_threads=4)


def test_invalid_settings_fail_at_construction_without_leaving_threads(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="thread"):
        create_tier("file", root_dir=tmp_path, read_threads=0, write_threads=0)
    assert threading.active_count() == before


def test_importing_the_registry_does_not_import_any_tier_module() -> None:
    probe = "import sys, tieredkv_agent.tiers; print('tieredkv_agent.tiers.file' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
