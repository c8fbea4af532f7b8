"""Kubernetes quantity parsing for byte counts."""

import pytest

from tieredkv_operator.quantity import format_bytes, parse_quantity

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1024", 1024),
        ("+5", 5),
        ("1Ki", 1024),
        ("10Mi", 10 * 1024**2),
        ("32Gi", 32 * 1024**3),
        ("2Ti", 2 * 1024**4),
        ("1Pi", 1024**5),
        ("1Ei", 1024**6),
        ("1k", 1000),
        ("3M", 3 * 10**6),
        ("500G", 500 * 10**9),
        ("4T", 4 * 10**12),
        ("1P", 10**15),
        ("2E", 2 * 10**18),
        ("1.5Gi", 3 * 512 * 1024**2),
        ("0.5Ki", 512),
        (".5k", 500),
        ("1.", 1),
        ("1e3", 1000),
        ("12E2", 1200),
        ("5e-1k", None),
    ],
)
def test_quantity_strings_parse_to_whole_numbers(text: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="not valid"):
            parse_quantity(text)
    else:
        assert parse_quantity(text) == expected


def test_integers_pass_through_unchanged() -> None:
    assert parse_quantity(34359738368) == 34359738368


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "not valid"),
        ("Gi", "not valid"),
        ("10 Gi", "not valid"),
        ("10gi", "not valid"),
        ("10GB", "not valid"),
        ("10Ki ", "not valid"),
        ("500m", "not valid"),
        ("1.2.3", "not valid"),
        ("-1Gi", "must not be negative"),
        ("0.1Ki", "not a whole number"),
        ("1.5", "not a whole number"),
        ("1e-3", "not a whole number"),
    ],
)
def test_bad_quantities_raise_a_value_error_that_names_them(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_quantity(bad)
    assert repr(bad) in str(info.value)


def test_the_error_for_an_unknown_suffix_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E"):
        parse_quantity("3X")


def test_negative_integers_and_booleans_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_quantity(-1)
    with pytest.raises(ValueError, match="boolean"):
        parse_quantity(True)


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0"), (1500, "1500"), (1024, "1Ki"), (34359738368, "32Gi"), (3 * 512 * 1024**2, "1536Mi")],
)
def test_byte_counts_format_to_the_largest_exact_binary_suffix(count: int, text: str) -> None:
    assert format_bytes(count) == text
    assert parse_quantity(text) == count
