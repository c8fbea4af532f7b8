"""The agent's tiers and their registry: a tier type name maps to `module:Class`, imported on first use.

`create_tier("file", root_dir=...)` builds a tier; every option becomes a constructor keyword, so an
unknown option fails at startup with the constructor's TypeError. Called from the agent's main thread.
"""

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, cast

from tieredkv_agent.tiers.base import Tier

TIER_TYPES: Final[Mapping[str, str]] = MappingProxyType({"file": "tieredkv_agent.tiers.file:FileTier"})
"""Tier type name -> `module:attribute` of its class; modules are imported only when that type is built."""


class UnknownTierTypeError(ValueError):
    """A tier type that is not in the registry; the message lists the supported ones."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.supported = tuple(sorted(TIER_TYPES))
        super().__init__(f"unknown tier type {type_name!r}; supported types: {', '.join(self.supported)}")


def tier_factory(type_name: str) -> Callable[..., Tier]:
    """The class registered for `type_name`, importing its module now; UnknownTierTypeError if none."""
    target = TIER_TYPES.get(type_name)
    if target is None:
        raise UnknownTierTypeError(type_name)
    module_name, _, attribute = target.partition(":")
    return cast(Callable[..., Tier], getattr(importlib.import_module(module_name), attribute))


def create_tier(type_name: str, /, **options: Any) -> Tier:
    """Build a tier of the registered type with `options` as constructor keywords."""
    return tier_factory(type_name)(**options)


__all__ = ["TIER_TYPES", "Tier", "UnknownTierTypeError", "create_tier", "tier_factory"]
