"""Issue 12, look-alike ids: application, office and vehicle ids are printable ASCII after NFKC."""

from __future__ import annotations

from typing import Any

import pytest

from retry_pipeline.errors import InvalidReport
from retry_pipeline.messages import parse_report


def body(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "application": "OSS-2026-000123",
        "office": "KEI-OSAKA",
        "procedure": "continuous",
        "vehicle": "JA11-123456",
        "missing": ["safety"],
        "detected_at": "2026-11-27T08:36:00+09:00",
    }
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (
            "application",
            "\u041eSS-2026-000123",  # Cyrillic capital O
            "application: Value error, ids are printable ASCII after NFKC normalization; "
            "'\u041e' (U+041E CYRILLIC CAPITAL LETTER O) at position 0 is not",
        ),
        (
            "office",
            "KEI-\u039fSAKA",  # Greek capital omicron
            "office: Value error, ids are printable ASCII after NFKC normalization; "
            "'\u039f' (U+039F GREEK CAPITAL LETTER OMICRON) at position 4 is not",
        ),
        (
            "vehicle",
            "JA11-12345\u0666",  # Arabic-Indic digit six
            "vehicle: Value error, ids are printable ASCII after NFKC normalization; "
            "'\u0666' (U+0666 ARABIC-INDIC DIGIT SIX) at position 10 is not",
        ),
        (
            "application",
            "申請-1",
            "application: Value error, ids are printable ASCII after NFKC normalization; "
            "'申' (U+7533 CJK UNIFIED IDEOGRAPH-7533) at position 0 is not",
        ),
    ],
    ids=["cyrillic-application", "greek-office", "arabic-digit-vehicle", "kanji-application"],
)
def test_non_ascii_ids_are_refused_with_a_clear_reason(field: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidReport) as caught:
        parse_report(body(**{field: value}))
    assert str(caught.value) == reason


def test_fullwidth_ids_fold_to_ascii_under_nfkc() -> None:
    report = parse_report(
        body(
            application="ＯＳＳ－２０２６－０００１２３",
            office="ＫＥＩ-ＯＳＡＫＡ",
            vehicle="ＪＡ１１-１２３４５６",
        )
    )
    assert report.subject.application == "OSS-2026-000123"
    assert report.subject.office == "KEI-OSAKA"
    assert report.subject.vehicle == "JA11-123456"


def test_the_insurance_key_of_a_new_inspection_is_ascii_too() -> None:
    with pytest.raises(InvalidReport, match="insurer_id: Value error, ids are printable ASCII"):
        parse_report(
            body(
                procedure="new",
                missing=["completion"],
                insurer_id="INS-\u0410",
                insurance_no="NO-1",
            )
        )


def test_plain_ascii_ids_are_unchanged() -> None:
    report = parse_report(body(application="OSS-2026-000123:a/b.c_d"))
    assert report.subject.application == "OSS-2026-000123:a/b.c_d"
