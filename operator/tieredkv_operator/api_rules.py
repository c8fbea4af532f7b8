"""The Kubernetes API server's own validation rules for the values a TieredKVCache hands on to its children.

Pure functions over plain values (standard library only), each returning a list of problems (empty: the
API server accepts it). They mirror k8s.io/apimachinery's validation (IsDNS1123Label, IsQualifiedName,
IsValidLabelValue, resource.ParseQuantity) and core/v1's rules for tolerations and resource requirements,
so the webhook can refuse a spec whose children the API server would refuse, naming the spec field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

DNS1123_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME_PART: Final = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUANTITY: Final = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
TOLERATION_KEYS: Final = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
TOLERATION_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_OPERATORS: Final = ("Exists", "Equal")
RESOURCE_KEYS: Final = frozenset({"limits", "requests"})
STANDARD_RESOURCES: Final = ("cpu", "memory", "ephemeral-storage")


def dns_label(value: str) -> list[str]:
    if len(value) > 63:
        return [f"{value!r} is {len(value)} characters long, a DNS label is at most 63"]
    if not DNS1123_LABEL.match(value):
        return [
            f"{value!r} is not a DNS label: lower-case letters, digits and '-', starting and ending "
            "with a letter or digit"
        ]
    return []


def dns_subdomain(value: str) -> list[str]:
    if len(value) > 253:
        return [f"{value!r} is {len(value)} characters long, a DNS subdomain is at most 253"]
    if not DNS1123_SUBDOMAIN.match(value):
        return [f"{value!r} is not a DNS subdomain: lower-case letters, digits, '-' and '.'"]
    return []


def qualified_name(value: str) -> list[str]:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63."""
    prefix, slash, name = value.rpartition("/")
    problems = []
    if slash and not prefix:
        problems.append(f"key {value!r} has an empty prefix before '/'")
    elif prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"key {value!r}: its prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME_PART.match(name):
        problems.append(
            f"key {value!r} is not a valid label key: at most 63 characters of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit (optionally prefixed by a DNS subdomain "
            "and '/')"
        )
    return problems


def label_value(value: str) -> list[str]:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        return [
            f"label value {value!r} is not valid: at most 63 characters of letters, digits, '-', '_' "
            "and '.', "
            "starting and ending with a letter or digit"
        ]
    return []


def labels(mapping: Mapping[str, Any]) -> list[str]:
    """Every problem of a label map (nodeSelector, matchLabels)."""
    problems: list[str] = []
    for key, value in mapping.items():
        problems += qualified_name(str(key))
        problems += (
            label_value(value) if isinstance(value, str) else [f"label {key!r}: value must be a string"]
        )
    return problems


_BINARY_EXPONENTS: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXPONENTS: Final = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}


def quantity(value: object) -> Decimal | None:
    """The value of a Kubernetes quantity (any form resource.ParseQuantity accepts), None if invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    text = str(value)
    match = re.match(r"^([+-]?[0-9.]+)(.*)$", text) if QUANTITY.match(text) else None
    if match is None:
        return None
    number, suffix = match.groups()
    base = Decimal(number)
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        exponent = int(suffix[1:])
    elif suffix in _BINARY_EXPONENTS:
        factor: int = 2 ** _BINARY_EXPONENTS[suffix]
        return base * factor
    else:
        exponent = _DECIMAL_EXPONENTS[suffix]
    scaled: Decimal = base.scaleb(exponent)
    return scaled


def toleration(item: Mapping[str, Any]) -> list[str]:
    """core/v1 Toleration rules (ValidateTolerations), plus: no keys the API server would silently drop."""
    problems = [
        f"unknown field {k!r} (a toleration has {', '.join(sorted(TOLERATION_KEYS))})"
        for k in sorted(set(item) - TOLERATION_KEYS)
    ]
    key, op, value = item.get("key", ""), item.get("operator", "Equal"), item.get("value", "")
    effect, seconds = item.get("effect", ""), item.get("tolerationSeconds")
    for field, got in (("key", key), ("operator", op), ("value", value), ("effect", effect)):
        if not isinstance(got, str):
            problems.append(f"{field} must be a string, got {got!r}")
    if problems:
        return problems
    if key:
        problems += qualified_name(key)
    if op not in (*TOLERATION_OPERATORS, ""):
        problems.append(f"operator {op!r} is not one of {', '.join(TOLERATION_OPERATORS)}")
    if not key and op != "Exists":
        problems.append("an empty key needs operator Exists (it tolerates every taint)")
    if op == "Exists" and value:
        problems.append(f"operator Exists takes no value, got {value!r}")
    elif value:
        problems += label_value(value)
    if effect not in (*TOLERATION_EFFECTS, ""):
        problems.append(f"effect {effect!r} is not one of {', '.join(TOLERATION_EFFECTS)}")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            problems.append(f"tolerationSeconds must be an integer, got {seconds!r}")
        elif effect != "NoExecute":
            problems.append("tolerationSeconds only applies with effect NoExecute")
    return problems


def resource_requirements(resources: Mapping[str, Any]) -> list[str]:
    """core/v1 ResourceRequirements: known keys, valid names, non-negative quantities, requests <= limits."""
    problems = [
        f"unknown field {k!r} (resources have limits and requests)"
        for k in sorted(set(resources) - RESOURCE_KEYS)
    ]
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in sorted(RESOURCE_KEYS & set(resources)):
        amounts = resources[part]
        if not isinstance(amounts, Mapping):
            problems.append(f"{part} must be a map of resource name to quantity")
            continue
        parsed[part] = {}
        for name, raw in amounts.items():
            problems += _resource_name(f"{part}.{name}", str(name))
            amount = quantity(raw)
            if amount is None:
                problems.append(f"{part}.{name}: {raw!r} is not a Kubernetes quantity (e.g. 512Mi, 500m, 2)")
            elif amount < 0:
                problems.append(f"{part}.{name}: {raw!r} must not be negative")
            else:
                parsed[part][str(name)] = amount
    for name, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and request > limit:
            problems.append(
                f"requests.{name} ({resources['requests'][name]}) exceeds limits.{name} "
                f"({resources['limits'][name]})"
            )
    return problems


def _resource_name(where: str, name: str) -> list[str]:
    if name in STANDARD_RESOURCES or name.startswith("hugepages-") or "/" in name:
        return [f"{where}: {p}" for p in qualified_name(name)]
    return [
        f"{where}: {name!r} is not a resource name (cpu, memory, ephemeral-storage, hugepages-<size>, "
        "or a domain-prefixed extended resource)"
    ]
