"""Kubernetes LabelSelector matching (matchLabels + matchExpressions) against a pod's labels (pure).

Used by the pod-injection webhook, so it runs on kopf's admission handler threads: no I/O, no API calls.
"""

from collections.abc import Mapping
from typing import assert_never

from tieredkv_operator.spec_vllm import LabelSelector, LabelSelectorRequirement, SelectorOperator


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when `labels` carry every matchLabels pair and satisfy every matchExpressions requirement.

    The semantics are the API server's: NotIn and DoesNotExist hold for a pod without the key.
    """
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    return all(requirement_holds(req, labels) for req in selector.match_expressions)


def requirement_holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    """Whether one matchExpressions entry holds for `labels`."""
    present = req.key in labels
    match req.operator:
        case SelectorOperator.IN:
            return present and labels[req.key] in req.values
        case SelectorOperator.NOT_IN:
            return not present or labels[req.key] not in req.values
        case SelectorOperator.EXISTS:
            return present
        case SelectorOperator.DOES_NOT_EXIST:
            return not present
        case _:  # pragma: no cover - the enum is exhaustive
            assert_never(req.operator)
