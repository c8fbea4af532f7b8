"""What the CLI hands every kopf handler through kopf's memo: the one settings object of the process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tieredkv_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Context:
    """Built once by the CLI; kopf passes it to every handler as `memo.context`."""

    settings: OperatorSettings
    watched_namespaces: frozenset[str] = field(default_factory=frozenset)
    """Namespaces the operator watches; empty: every namespace."""


def context(memo: Any) -> Context:
    """The Context in a handler's `memo` (kopf.Memo is a dict with attribute access)."""
    found: Context = memo["context"]
    return found
