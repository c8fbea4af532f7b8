"""Admission checks of TieredKVCache objects for the validating webhook (pure: no kopf, no API client).

`validate(new, old)` runs on kopf's admission handler threads for every CREATE and UPDATE of a
TieredKVCache, so it must stay fast and pure. It returns human-readable error lines, empty to admit:

* the spec must pass `TieredKVCacheSpec` (types, ranges and every cross-field rule of the model), each
  pydantic error rendered as `spec.<camelCase.path>: <message>`;
* on CREATE, the name must leave room for the longest child name (`tieredkv-<name>-metrics`, a Service,
  hence a 63-character DNS label);
* in agent mode, the agent socket path must fit a Unix socket address (107 bytes);
* every child the spec produces must pass the API server's rules (`child_checks`), so no child is refused
  after others were created;
* unknown fields (a typo such as `highWaterMark`) are refused, naming the field and the closest known one;
* on UPDATE, what a PersistentVolumeClaim cannot change stays fixed: `storage.accessModes`,
  `storage.storageClassName`, `storage.existingClaim` (adopting, releasing or switching claims), and
  `storage.size` may grow but never shrink;
* on UPDATE, a change that orphans every stored block (`storage.subPath`, `hashSeed`, `vllm.hashAlgo`,
  `vllm.version`) needs the annotation `tieredkv.io/allow-orphaning: "true"`. Everything else may change.

An UPDATE that leaves the spec as it was (metadata-only changes such as kopf's finalizer and annotation
patches, or a deletion in progress) is always admitted: an object created before the webhook existed must
stay deletable.
"""

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from tieredkv_common.agent_limits import MAX_SOCKET_PATH_BYTES
from tieredkv_operator.admission.child_checks import child_errors
from tieredkv_operator.names import ANNOTATION_ALLOW_ORPHANING, child_name, metrics_service_name
from tieredkv_operator.quantity import parse_quantity
from tieredkv_operator.resources.vllm_config import agent_socket_path
from tieredkv_operator.spec import AccessMode, TieredKVCacheSpec, VllmMode

MAX_NAME_LENGTH: Final = 63 - len(metrics_service_name(""))
"""Longest TieredKVCache name whose metrics Service name is still a DNS label."""
ORPHANING_FIELDS: Final[tuple[tuple[tuple[str, ...], object], ...]] = (
    (("storage", "subPath"), None),
    (("hashSeed",), {}),
    (("vllm", "hashAlgo"), "sha256"),
    (("vllm", "version"), None),
)
"""Spec fields whose change orphans every stored block: (path, value when absent)."""
GENERATED_SUFFIX_LENGTH: Final = 5
"""Characters the API server appends to metadata.generateName."""
_DEFAULT_ACCESS_MODES: Final = [AccessMode.READ_WRITE_MANY.value]
_SHOWN_INPUT_TYPES: Final = (str, int, float, bool)


def validate(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[str]:
    """Error messages for a TieredKVCache CREATE (`old` None) or UPDATE; an empty list admits it."""
    if old is not None and (
        new.get("spec") == old.get("spec") or _mapping(new, "metadata").get("deletionTimestamp")
    ):
        return []
    spec, errors = parse_spec(new.get("spec"))
    metadata = _mapping(new, "metadata")
    if old is None:
        errors += _name_errors(metadata)
    if spec is not None:
        errors += _socket_path_errors(spec, metadata)
        if not errors and isinstance(metadata.get("name") or metadata.get("generateName"), str):
            name = str(metadata.get("name") or f"{metadata.get('generateName')}xxxxx")
            errors += child_errors(name, str(metadata.get("namespace") or ""), spec)
    if old is not None:
        errors += immutable_errors(new, old)
        errors += orphaning_errors(new, old)
    return errors


def orphaning_errors(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    """Changes that orphan every stored block, unless the update carries the allow-orphaning annotation."""
    if _mapping(_mapping(new, "metadata"), "annotations").get(ANNOTATION_ALLOW_ORPHANING) == "true":
        return []
    errors = []
    for path, absent in ORPHANING_FIELDS:
        before, after = _get(old, path, absent), _get(new, path, absent)
        if before != after:
            shown = "(changed)" if path == ("hashSeed",) else f"(was {before!r}, now {after!r})"
            errors.append(
                f"spec.{'.'.join(path)} cannot change {shown} without orphaning every block stored so far: "
                f'keep it, or set annotation {ANNOTATION_ALLOW_ORPHANING}: "true" in the same update to do '
                "it anyway (the operator records it in an Event)"
            )
    return errors


def _get(obj: Mapping[str, Any], path: tuple[str, ...], absent: object) -> object:
    node: object = _mapping(obj, "spec")
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return absent if node is None else node


def parse_spec(raw: object) -> tuple[TieredKVCacheSpec | None, list[str]]:
    """The parsed spec and no errors, or None and one `spec.<path>: <message>` line per problem."""
    if raw is None:
        return None, ["spec: required: a TieredKVCache needs at least spec.storage and spec.vllm"]
    try:
        return TieredKVCacheSpec.model_validate(raw), []
    except ValidationError as err:
        return None, format_errors(err)


def format_errors(err: ValidationError) -> list[str]:
    """One line per pydantic error, `spec.<camelCase.path>: <message>`, duplicates dropped."""
    lines: list[str] = []
    for error in err.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        shown = error.get("input")
        if error["type"] == "extra_forbidden":
            message = _unknown_field(str(error["loc"][-1]))
        elif error["type"] != "value_error" and isinstance(shown, _SHOWN_INPUT_TYPES):
            text = repr(shown)
            message = f"{message} (got {text[:60] + '...' if len(text) > 60 else text})"
        line = f"{_path(error['loc'])}: {message}"
        if line not in lines:
            lines.append(line)
    return lines


def _unknown_field(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_known_fields(TieredKVCacheSpec)), n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {name!r}{hint}: the API server would drop it silently, so it is refused"


def _known_fields(model: type[BaseModel]) -> Iterator[str]:
    for name, info in model.model_fields.items():
        yield info.alias or name
        for sub in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from _known_fields(sub)


def immutable_errors(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    """What an UPDATE may not change in spec.storage (the raw objects: the old one may predate the model)."""
    new_storage, old_storage = _storage(new), _storage(old)
    name = str(_mapping(new, "metadata").get("name") or "<name>")
    return [
        *_access_mode_errors(new_storage, old_storage),
        *_storage_class_errors(new_storage, old_storage),
        *_existing_claim_errors(new_storage, old_storage, name),
        *_size_errors(new_storage, old_storage),
    ]


def _access_mode_errors(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    before = old.get("accessModes") or _DEFAULT_ACCESS_MODES
    after = new.get("accessModes") or _DEFAULT_ACCESS_MODES
    if before == after:
        return []
    return [
        f"spec.storage.accessModes cannot change (was {_list(before)}, now {_list(after)}): a claim's "
        "access modes are fixed when it is created; keep the old value, or create a new TieredKVCache"
    ]


def _storage_class_errors(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    before, after = old.get("storageClassName"), new.get("storageClassName")
    if before == after or old.get("existingClaim") or new.get("existingClaim"):
        return []
    return [
        f"spec.storage.storageClassName cannot change (was {before!r}, now {after!r}): a claim's "
        "StorageClass is fixed when it is created; keep the old value, or create a new TieredKVCache"
    ]


def _existing_claim_errors(new: Mapping[str, Any], old: Mapping[str, Any], name: str) -> list[str]:
    before, after = old.get("existingClaim"), new.get("existingClaim")
    if before == after:
        return []
    if after is None:
        return [
            f"spec.storage.existingClaim cannot be removed (was {before!r}): the cache would move to a new, "
            f"empty claim; keep it, or create a new TieredKVCache that creates its own claim"
        ]
    if before is None:
        created = child_name(name)
        return [
            f"spec.storage.existingClaim cannot be set on an existing cache (now {after!r}): this cache "
            f"already uses the claim {created!r} it created; create a new TieredKVCache to adopt {after!r}"
        ]
    return [
        f"spec.storage.existingClaim cannot change from {before!r} to {after!r}: the cached blocks live on "
        f"{before!r}; create a new TieredKVCache to adopt {after!r}"
    ]


def _size_errors(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    before, after = _bytes(old.get("size")), _bytes(new.get("size"))
    if before is None or after is None or after >= before:
        return []
    return [
        f"spec.storage.size cannot shrink (was {old['size']}, now {new['size']}): Kubernetes cannot shrink a "
        "PersistentVolumeClaim; keep the old size or larger, and bound usage with spec.capacity.maxBytes"
    ]


def _name_errors(metadata: Mapping[str, Any]) -> list[str]:
    name = metadata.get("name")
    generate = metadata.get("generateName")
    length = len(name) if isinstance(name, str) and name else None
    if length is None and isinstance(generate, str):
        length = len(generate) + GENERATED_SUFFIX_LENGTH
    if length is None or length <= MAX_NAME_LENGTH:
        return []
    return [
        f"metadata.name is {length} characters long, at most {MAX_NAME_LENGTH} are allowed: the cache's "
        f"metrics Service is called {metrics_service_name('<name>')!r} and a Service name is at most 63 "
        "characters; choose a shorter name"
    ]


def _socket_path_errors(spec: TieredKVCacheSpec, metadata: Mapping[str, Any]) -> list[str]:
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if spec.vllm.mode is not VllmMode.AGENT or not isinstance(name, str) or not isinstance(namespace, str):
        return []
    path = agent_socket_path(spec.agent.socket_dir, namespace, name)
    size = len(path.encode())
    if size <= MAX_SOCKET_PATH_BYTES:
        return []
    return [
        f"spec.agent.socketDir: the agent socket path {path!r} is {size} bytes, but a Unix socket path is at "
        f"most {MAX_SOCKET_PATH_BYTES}; choose a shorter socketDir (or a shorter cache name)"
    ]


def _path(loc: Sequence[int | str]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _storage(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(obj, "spec"), "storage")


def _mapping(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _bytes(value: object) -> int | None:
    if not isinstance(value, int | str):
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def _list(values: object) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]" if isinstance(values, list) else repr(values)
