"""Generate the TieredKVCache CustomResourceDefinition from the pydantic models.

    python -m tieredkv_operator.crd > crds/tieredkv.io_tieredkvcaches.yaml

The models' JSON schema is turned into a structural OpenAPI v3 schema a Kubernetes 1.20 API server accepts:
`$ref`s inlined, optional fields' null branches dropped, pydantic-only keys (title) removed, exclusive bounds
in OpenAPI 3.0 form, object defaults reduced to `{}` so the server applies the nested defaults, and free-form
maps marked `x-kubernetes-preserve-unknown-fields`. No CEL: cross-field rules belong to the webhook.
"""

import sys
from typing import Any, Final

import yaml
from pydantic import BaseModel

from tieredkv_operator.spec import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, TieredKVCacheSpec
from tieredkv_operator.status_model import TieredKVCacheStatus

Schema = dict[str, Any]

HEADER: Final = "# Generated from the models by `python -m tieredkv_operator.crd`. Do not edit.\n"

_COPIED_KEYS: Final = frozenset(
    {
        "type",
        "format",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)
_DROPPED_KEYS: Final = frozenset({"title", "examples", "$defs"})
_TRANSLATED_KEYS: Final = frozenset(
    {"description", "default", "const", "exclusiveMinimum", "exclusiveMaximum"}
    | {"properties", "items", "additionalProperties"}
)

PRINTER_COLUMNS: Final[list[Schema]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Summary"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.agents.ready", "description": "Agents ready"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.agents.desired", "description": "Agents"},
    {"name": "PVC", "type": "string", "jsonPath": ".status.pvcName", "description": "Claim of the volume"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.vllm.mode", "priority": 1},
    {"name": "vLLM", "type": "string", "jsonPath": ".spec.vllm.version", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class CrdSchemaError(ValueError):
    """The model produced a JSON schema construct that has no structural OpenAPI equivalent."""


def structural_schema(model: type[BaseModel], *, with_defaults: bool) -> Schema:
    """The structural OpenAPI v3 schema of a model, ready for a CRD version's `openAPIV3Schema`."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}), with_defaults=with_defaults, path=model.__name__)


def _resolve(node: Schema, defs: Schema) -> Schema:
    """Inline a `$ref` and drop the null branch of an optional field; the node's own keys win."""
    node = dict(node)
    any_of = node.get("anyOf")
    if any_of is not None:
        kept = [branch for branch in any_of if branch != {"type": "null"}]
        if len(kept) == 1 and len(any_of) == 2:
            del node["anyOf"]
            node = {**kept[0], **node}
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.removeprefix("#/$defs/")]
        node = {**_resolve(target, defs), **node}
    return node


def _convert(node: Schema, defs: Schema, *, with_defaults: bool, path: str) -> Schema:
    """One JSON schema node (and everything below it) as a structural OpenAPI node with sorted keys."""
    node = _resolve(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _COPIED_KEYS:
            out[key] = value
        elif key not in _TRANSLATED_KEYS and key not in _DROPPED_KEYS:
            raise CrdSchemaError(f"{path}: no structural equivalent for JSON schema key {key!r}")
    if "description" in node:
        out["description"] = " ".join(str(node["description"]).split())
    if "const" in node:
        out["enum"] = [node["const"]]
    _convert_exclusive_bounds(node, out)
    if "properties" in node:
        out["properties"] = {
            name: _convert(sub, defs, with_defaults=with_defaults, path=f"{path}.{name}")
            for name, sub in sorted(node["properties"].items())
        }
    elif out.get("type") == "object":
        _convert_map(node, out, defs, with_defaults=with_defaults, path=path)
    if "items" in node:
        out["items"] = _convert(node["items"], defs, with_defaults=with_defaults, path=f"{path}[]")
    if with_defaults and node.get("default") is not None:
        out["default"] = {} if "properties" in node else node["default"]
    if "type" not in out and "x-kubernetes-int-or-string" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return dict(sorted(out.items()))


def _convert_exclusive_bounds(node: Schema, out: Schema) -> None:
    """Exclusive bounds: numbers in JSON schema 2020, booleans in OpenAPI 3.0; integers get inclusive ones."""
    for bound, inclusive, step in (("exclusiveMinimum", "minimum", 1), ("exclusiveMaximum", "maximum", -1)):
        if bound not in node:
            continue
        if node.get("type") == "integer":
            out[inclusive] = node[bound] + step
        else:
            out[inclusive] = node[bound]
            out[bound] = True


def _convert_map(node: Schema, out: Schema, defs: Schema, *, with_defaults: bool, path: str) -> None:
    """A dict-typed field: typed values keep their schema, free-form values keep unknown fields."""
    values = node.get("additionalProperties", True)
    if isinstance(values, dict):
        values = _resolve(values, defs)
    if values is True or values == {}:
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(values, dict):
        out["additionalProperties"] = _convert(values, defs, with_defaults=with_defaults, path=f"{path}{{}}")
    else:
        raise CrdSchemaError(f"{path}: a map must allow values, got additionalProperties={values!r}")


def _keep_unknown_fields(node: Schema) -> None:
    """Mark every object of the spec x-kubernetes-preserve-unknown-fields: the API server then hands an
    unknown field (a typo) to the validating webhook, which refuses it by name, instead of dropping it."""
    if "properties" in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    for sub in (*node.get("properties", {}).values(), node.get("items"), node.get("additionalProperties")):
        if isinstance(sub, dict):
            _keep_unknown_fields(sub)


def open_api_schema() -> Schema:
    """The whole object's schema: the standard envelope plus spec and status."""
    spec = structural_schema(TieredKVCacheSpec, with_defaults=True)
    _keep_unknown_fields(spec)
    status = structural_schema(TieredKVCacheStatus, with_defaults=False)
    return {
        "description": "A shared, tiered KV cache for the vLLM pods it selects.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest() -> Schema:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tieredkv", "app.kubernetes.io/part-of": "tieredkv"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["tieredkv"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML text committed under crds/ (deterministic: same models, same bytes)."""
    body = yaml.safe_dump(crd_manifest(), sort_keys=False, default_flow_style=False, width=110)
    return HEADER + body


def main() -> int:
    sys.stdout.write(render_crd_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
