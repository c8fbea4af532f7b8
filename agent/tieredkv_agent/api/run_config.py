"""The run config a plugin sends in its Hello: checked against the namespace, written as config.json.

vLLM's fs tier writes `<root>/<namespace>/config.json` (its run-config fields, indent 2, sorted keys) the
first time it serves a namespace. In agent mode vLLM's pod has no volume, so the plugin sends the same
fields and the agent writes the file. A client could send anything, so the fields must digest to the
namespace name the Hello claims (`<safe model name>_<digest12>`), must be a JSON object, and are written
with an exclusive create: the first writer wins and an existing file is never replaced.

Called on a connection's reader thread while it handles a Hello.
"""

from __future__ import annotations

import json
import logging

from tieredkv_agent.store.naming import Namespace, config_digest, ensure_namespace, safe_model_name

log = logging.getLogger(__name__)


def parse_run_config(namespace: str, text: str) -> dict[str, object]:
    """The fields of `text`; ValueError naming the problem unless they digest to `namespace`."""
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"run_config is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("run_config is not a JSON object")
    model = fields.get("model_name")
    if not isinstance(model, str):
        raise ValueError("run_config has no model_name string")
    expected = f"{safe_model_name(model)}_{config_digest(fields)}"
    if expected != namespace:
        raise ValueError(f"run_config digests to namespace {expected!r}, not {namespace!r}")
    return fields


def write_config_json(namespace: Namespace) -> None:
    """Write the namespace's config.json unless it exists; an I/O error is logged, not raised."""
    try:
        if ensure_namespace(namespace):
            log.info("wrote %s/config.json", namespace.config_dir)
    except OSError as exc:
        log.warning("cannot write %s/config.json: %s", namespace.config_dir, exc)
