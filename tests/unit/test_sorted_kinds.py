"""``sorted_kinds``: certificate kinds in the one order storage and messages use."""

from __future__ import annotations

from itertools import combinations

import pytest

from retry_pipeline.model import CertificateKind, sorted_kinds

ORDER = ["safety", "insurance", "completion"]  # as CertificateKind declares them


@pytest.mark.parametrize(
    "kinds", [frozenset(c) for n in range(4) for c in combinations(CertificateKind, n)]
)
def test_every_set_in_declaration_order(kinds: frozenset[CertificateKind]) -> None:
    expected = [k for k in ORDER if k in {kind.value for kind in kinds}]
    assert sorted_kinds(kinds) == expected
    assert sorted_kinds(set(kinds)) == expected  # a plain set too


def test_each_call_returns_a_list_of_its_own() -> None:
    first = sorted_kinds(frozenset({CertificateKind.SAFETY}))
    first.append("changed")  # a caller's list is its own (the answer is memoized)
    assert sorted_kinds(frozenset({CertificateKind.SAFETY})) == ["safety"]


def test_a_value_that_is_no_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not certificate kinds"):
        sorted_kinds({CertificateKind.SAFETY, "registration"})  # type: ignore[arg-type]
