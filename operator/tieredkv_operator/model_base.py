"""Building blocks shared by the TieredKVCache spec and status models.

`CamelModel` gives camelCase names on the wire and snake_case in Python. The annotated types below carry
their own validation and the JSON schema the CRD generator turns into a structural OpenAPI schema.
"""

from typing import Annotated, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel

from tieredkv_operator.quantity import parse_quantity

DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"

INT_OR_STRING_SCHEMA: Final = {"x-kubernetes-int-or-string": True}


class CamelModel(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields rejected, immutable once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class LenientCamelModel(CamelModel):
    """Base of the status models: unknown fields (written by a newer operator) are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")


def _checked_quantity(value: object) -> str:
    """Accept an int or a quantity string, keep the string form the user wrote."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a Kubernetes quantity (e.g. 100Gi) or an integer, got {value!r}")
    parse_quantity(value)
    return str(value)


def _quantity_to_int(value: object) -> int:
    """Accept an int or a quantity string and return the integer it stands for."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a Kubernetes quantity (e.g. 32Gi) or an integer, got {value!r}")
    return parse_quantity(value)


Quantity = Annotated[str, BeforeValidator(_checked_quantity), WithJsonSchema(INT_OR_STRING_SCHEMA)]
"""A quantity kept verbatim ("500Gi"), for values handed on to Kubernetes objects such as a PVC request."""

ByteCount = Annotated[int, BeforeValidator(_quantity_to_int), WithJsonSchema(INT_OR_STRING_SCHEMA)]
"""A byte count written as a quantity or an integer, held in Python as the integer it stands for."""

DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DnsSubdomain = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]
