"""Set-if-absent edits of a camelCase pod dict, with collision detection (pure).

Every helper edits the dict it is given in place (the caller works on a deep copy) and raises
`EditConflictError` when the pod already holds something under the same name or mount path with different
content. Entries equal to ours (ignoring unset, false and empty-string fields the API server may add or
drop) are left as they are, which makes the edits idempotent. They run on kopf's admission handler
threads: fast and pure.
"""

import copy
from typing import Any

JsonDict = dict[str, Any]


class EditConflictError(Exception):
    """Something of ours collides with a different volume, mount, env var or init container in the pod."""


def items(parent: JsonDict, key: str) -> list[JsonDict]:
    """The dict entries of parent[key] (read only; absent or null gives an empty list)."""
    value = parent.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def child_list(parent: JsonDict, key: str) -> list[Any]:
    """parent[key] as a list to append to, created when absent or null."""
    value = parent.get(key)
    if not isinstance(value, list):
        value = []
        parent[key] = value
    return value


def child_dict(parent: JsonDict, key: str) -> JsonDict:
    """parent[key] as a dict to write to, created when absent or null."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = {}
        parent[key] = value
    return value


def normalized(value: Any) -> Any:
    """`value` without null, false and empty-string fields, so defaulted and bare objects compare equal."""
    if isinstance(value, dict):
        return {
            key: normalized(item)
            for key, item in value.items()
            if not (item is None or item is False or item == "")
        }
    if isinstance(value, list):
        return [normalized(item) for item in value]
    return value


def named(parent: JsonDict, key: str, name: str) -> list[JsonDict]:
    """The entries of parent[key] called `name` (env may legally repeat a name)."""
    return [item for item in items(parent, key) if item.get("name") == name]


def ensure_named(parent: JsonDict, key: str, wanted: JsonDict, what: str) -> None:
    """Append `wanted` to parent[key] unless an equal entry of that name exists; a different one conflicts."""
    for existing in named(parent, key, wanted["name"]):
        if normalized(existing) != normalized(wanted):
            raise EditConflictError(
                f"the pod already has a {what} named {wanted['name']!r} that differs from tieredkv's"
            )
    if not named(parent, key, wanted["name"]):
        child_list(parent, key).append(copy.deepcopy(wanted))


def mount_at(container: JsonDict, path: str) -> JsonDict | None:
    """The container's volumeMount at `path` (trailing slashes ignored), if any."""
    for mount in items(container, "volumeMounts"):
        if _clean(mount.get("mountPath")) == _clean(path):
            return mount
    return None


def ensure_mount(container: JsonDict, mount: JsonDict) -> None:
    """Mount `mount` in the container unless it is there already; another volume at that path conflicts."""
    existing = mount_at(container, mount["mountPath"])
    if existing is None:
        child_list(container, "volumeMounts").append(copy.deepcopy(mount))
    elif normalized(existing) != normalized(mount):
        raise EditConflictError(
            f"container {container.get('name')!r} already mounts volume {existing.get('name')!r} at "
            f"{mount['mountPath']}, where tieredkv mounts {mount['name']!r}"
        )


def _clean(path: object) -> str:
    text = str(path or "")
    return text.rstrip("/") or text
