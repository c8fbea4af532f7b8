"""values.yaml, values.schema.json, the templates and README.md agree: every value is in the strict schema,
used by a template, commented in values.yaml and listed in the README."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.unit.chart_helpers import CHART, run_helm

pytestmark = pytest.mark.unit

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
_KEY = re.compile(r"^(\s*)([A-Za-z][\w-]*):")


def leaves(schema: dict[str, Any], values: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema) of every value: objects with defaults inside are walked; anything else (a list,
    a free-form map, an object that is empty by default such as issuerRef) is one value."""
    for key, sub in schema.get("properties", {}).items():
        path, default = f"{prefix}{key}", (values or {}).get(key)
        if "properties" in sub and default:
            yield from leaves(sub, default, f"{path}.")
        else:
            yield path, sub


LEAVES = dict(leaves(SCHEMA, VALUES))


def _get(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def _objects(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _objects(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"], f"{path}[]")


def test_every_object_the_schema_defines_refuses_unknown_keys() -> None:
    for path, node in _objects(SCHEMA):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path or "(root)"


def test_free_form_values_are_string_maps_or_kubernetes_structures_only() -> None:
    free = {p for p, s in LEAVES.items() if s.get("type") == "object" and "properties" not in s}
    string_maps = {p for p in free if LEAVES[p].get("additionalProperties") == {"type": "string"}}
    assert free - string_maps == {
        "operator.podSecurityContext",
        "operator.securityContext",
        "operator.resources",
        "operator.affinity",
        "csi.resources",
        "webhook.namespaceSelector",
    }


def test_the_schema_and_values_yaml_have_the_same_values() -> None:
    for path in LEAVES:
        _get(VALUES, path)  # KeyError names a value the schema has and values.yaml lacks

    def walk(data: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
        for key, value in data.items():
            assert key in schema.get("properties", {}), f"{prefix}{key} is not in values.schema.json"
            sub = schema["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                walk(value, sub, f"{prefix}{key}.")

    walk(VALUES, SCHEMA, "")


def test_every_value_has_a_description_in_the_schema() -> None:
    for path, node in LEAVES.items():
        assert node.get("description"), path


def test_helm_refuses_unknown_and_mistyped_values() -> None:
    for bad in (
        "operator.replica=2",
        "bogus=1",
        "webhook.tls.certManager.issuer=x",
        "webhook.failurePolicy=Sometimes",
    ):
        out = run_helm("lint", str(CHART), "--set", bad, check=False)
        assert out.returncode != 0, f"--set {bad} was accepted"


def _template_text() -> str:
    """All templates, with `$x := .Values.a.b` aliases spelled out so `$x.c` reads `.Values.a.b.c`."""
    text = "\n".join(p.read_text() for p in sorted((CHART / "templates").iterdir()))
    for alias, target in re.findall(r"(\$\w+) := \.Values\.([\w.]+)", text):
        text = re.sub(re.escape(alias) + r"\.(?=\w)", f".Values.{target}.", text)
    return text


def test_every_value_is_used_by_a_template() -> None:
    text = _template_text()
    unused = [p for p in LEAVES if not re.search(r"\.Values\." + re.escape(p) + r"(?![\w])", text)]
    assert not unused, f"values no template uses: {unused}"


def _commented_paths() -> dict[str, bool]:
    """Every key of values.yaml by dotted path, and whether a comment line sits right above it."""
    stack: list[tuple[int, str]] = []
    found: dict[str, bool] = {}
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        if m := _KEY.match(line):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            found[".".join(k for _, k in stack)] = previous.strip().startswith("#")
        if line.strip() and not line.strip().startswith("- "):
            previous = line
    return found


def test_every_value_is_commented_in_values_yaml() -> None:
    commented = _commented_paths()
    missing = [p for p in LEAVES if not commented.get(p)]
    assert not missing, f"values without a comment above them: {missing}"


def test_every_value_is_listed_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+)` \|", readme, re.M))
    assert listed == set(LEAVES)
