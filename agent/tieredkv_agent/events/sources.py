"""From the tier's sources of truth to KV-event changes: a published block file, a GC deletion.

Which agent says what (docs/events.md): every agent publishes BlockStored for the block files its own
stores published (the link that made the file visible: exactly one writer wins it), BlockRemoved for a
file one of its loads found short and deleted, and the GC leader publishes BlockRemoved for every block
file its passes deleted. A subscriber connects to every agent of the cache (the events
Service's endpoints) and keeps the union; the identity in the topics is the cache's, so the view is one
"pool" rather than one phantom pod per agent.

Block hashes are the bytes vLLM's router knows: the file name `<h>.bin` is the lowercase hex of vLLM's
block hash for that chunk (`get_offload_block_hash(key)`), and its `_g<group>` directory the KV-cache group
index. The topic's model is `model_name` from the namespace's config.json (the string vLLM was served
with); the event's `ownership` is the namespace directory name `<safe_model>_<digest12>`, so that two
run configs of one model (other dtype, other parallel sizes) stay apart.

Threads: `block_file` runs on the file tier's I/O threads, `evicted` on the GC's eviction threads; both only
parse names and enqueue (`KvEventPublisher.publish` never blocks). The model name of a namespace is read
from its config.json once and kept (a bounded map).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Protocol

from tieredkv_agent.events.publisher import Change
from tieredkv_agent.events.summary import MembershipSummary
from tieredkv_agent.events.wire import topic_for
from tieredkv_agent.store.naming import (
    Namespace,
    block_relpath,
    blocks_dir_name,
    make_offload_key,
    parse_namespace_dir,
    split_offload_key,
)

log = logging.getLogger(__name__)

MAX_KNOWN_NAMESPACES = 4096


class ChangeSink(Protocol):
    """Where changes go: `KvEventPublisher.publish` (never blocks; False when the change was dropped)."""

    def publish(self, change: Change) -> bool: ...

    def publish_waiting(self, change: Change, timeout_s: float = 5.0) -> bool: ...


class BlockEvents:
    """Turns block-file changes of one cache into queued events on `publisher` under `identity`."""

    def __init__(self, publisher: ChangeSink, identity: str) -> None:
        self.publisher = publisher
        self.identity = identity
        self.root: Path | None = None
        """The store directory, for namespaces named by a walk (set by `assemble`)."""
        self.summary: MembershipSummary | None = None
        """Hears this agent's new blocks between its walks (set by `assemble` when it serves one)."""
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()

    def block_file(self, namespace: Namespace, key: bytes, present: bool) -> None:
        """This agent's store published (`present`) or a load deleted the block file of `key` as short
        (file-tier I/O threads: the file tier's `on_block_file`)."""
        block_hash, group = split_offload_key(key)
        name = namespace.config_dir.name
        model = namespace.fields.get("model_name")
        if isinstance(model, str):
            self._remember(name, model)
        else:
            model = self._model(namespace.config_dir)
        change = Change(topic_for(self.identity, model), not present, block_hash, group, name)
        self.publisher.publish(change)
        if present and self.summary is not None:
            self.summary.add(name, block_hash)

    def evicted(self, path: str) -> None:
        """GC deleted the block file at `path` (GC eviction threads); names it cannot parse are skipped."""
        parsed = parse_block_path(path)
        if parsed is None:
            log.warning("no KV event for the deleted file %s: not a block file path", path)
            return
        config_dir, block_hash, group = parsed
        model = self._model(config_dir)
        self.publisher.publish(
            Change(topic_for(self.identity, model), True, block_hash, group, config_dir.name)
        )

    def announce(self, namespace: str, block_hash: bytes, group: int) -> None:
        """A block file found by a walk of the volume (the tkv-summary thread; waits for queue room).

        GC may delete the file between the walk and this BlockStored, and its BlockRemoved may then have
        gone out first; so the file is checked *after* the BlockStored is queued, and if it is gone a
        BlockRemoved follows. A deletion after the check is announced by GC after it, in order.
        """
        config_dir = self._root_of(namespace)
        topic = topic_for(self.identity, self._model(config_dir))
        self.publisher.publish_waiting(Change(topic, False, block_hash, group, namespace))
        path = config_dir.with_name(blocks_dir_name(namespace)) / block_relpath(
            make_offload_key(block_hash, group)
        )
        if not path.exists():
            self.publisher.publish_waiting(Change(topic, True, block_hash, group, namespace))

    def _root_of(self, namespace: str) -> Path:
        """The config directory of a namespace name (only its name and config.json are used)."""
        return (self.root or Path()) / namespace

    def cleared(self, model: str) -> None:
        """Everything of `model` announced before is gone (the tkv-summary thread; waits for queue room)."""
        change = Change(topic_for(self.identity, model), True, b"", 0, None, cleared=True)
        self.publisher.publish_waiting(change)

    def model_of(self, namespace: str) -> str:
        """The model name of a namespace directory name (config.json's `model_name`; any thread)."""
        return self._model(self._root_of(namespace))

    def _remember(self, name: str, model: str) -> None:
        with self._lock:
            if name not in self._models and len(self._models) < MAX_KNOWN_NAMESPACES:
                self._models[name] = model

    def _model(self, config_dir: Path) -> str:
        """The namespace's model name: config.json's `model_name`, else the directory name's model part."""
        name = config_dir.name
        with self._lock:
            known = self._models.get(name)
        if known is not None:
            return known
        model = name[:-13]  # `<safe_model>_<digest12>`: `/` was replaced by `_`, so this is a fallback
        try:
            fields = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
            if isinstance(fields, dict) and isinstance(fields.get("model_name"), str):
                model = fields["model_name"]
        except (OSError, ValueError):
            log.warning("no config.json in %s: the model in its events' topic is %r", config_dir, model)
        self._remember(name, model)
        return model


def parse_block_path(path: str) -> tuple[Path, bytes, int] | None:
    """(config dir, block hash, group) of `<root>/<ns>_r<rank>/<h3>/<h2>_g<group>/<h>.bin`, else None."""
    file = Path(path)
    leaf, prefix, blocks_dir = file.parent, file.parent.parent, file.parent.parent.parent
    stem, _, group_text = leaf.name.partition("_g")
    h = file.name.removesuffix(".bin")
    if file.suffix != ".bin" or not group_text.isdigit() or h[:3] != prefix.name or h[3:5] != stem:
        return None
    parsed = parse_namespace_dir(blocks_dir.name)
    if parsed is None or parsed[1] is None:
        return None
    try:
        block_hash = bytes.fromhex(h)
    except ValueError:
        return None
    return blocks_dir.with_name(parsed[0]), block_hash, int(group_text)
