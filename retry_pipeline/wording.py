"""Plain Japanese for office staff (shared/UI-WORDING.md): the console and CLI ``status``.

No rule numbers and no internal names (phase, cursor, chain id) reach staff; dates read
as 2026年12月2日（水）, times as 08:30, in Japan time without an offset.
"""

from __future__ import annotations

from datetime import datetime

from retry_pipeline.calendar import to_local

KIND = {"safety": "保適証", "insurance": "自賠責証", "completion": "完検証"}
KIND_ORDER = ("safety", "insurance", "completion")
WEEKDAY = "月火水木金土日"
IN_RETRY = "リトライ中"
RETRY_TABLE = "リトライ対象"
NOT_LINKED = "未連携（軽ＭＯＴＡＳに未反映）"
PARKED = "受付終了のため停止中（翌業務日 08:30 に1回確認）"
RESUMED = "前審査を再実行"
AUTO_CORRECTED = "自動補正（添付書類なし）"
AUTO_CORRECTED_REPLACED = "自動補正（電子証明書の差し替え等）"
DETECTED_AT = "エラー発生時刻"
DECIDED_TODAY = "本日処理済み"
REFUSED_MESSAGE = "受付不可メッセージ"
UNCONFIRMED_OUTCOME = "審査側未確認の結果"
OUTCOME_SHORT = {"resumed": "再審査へ", "auto_corrected": "自動補正"}


def kinds_text(kinds: list[str] | tuple[str, ...]) -> str:
    """保適証・自賠責証 in the usual order."""
    ordered = [k for k in KIND_ORDER if k in kinds]
    return "・".join(KIND[k] for k in ordered)


def date_text(instant: datetime) -> str:
    """2026年12月2日（水） (Japan time)."""
    local = to_local(instant)
    return f"{local.year}年{local.month}月{local.day}日（{WEEKDAY[local.weekday()]}）"


def time_text(instant: datetime) -> str:
    """08:30 (Japan time, no offset)."""
    return to_local(instant).strftime("%H:%M")


def datetime_text(instant: datetime) -> str:
    """2026年12月2日（水） 08:30."""
    return f"{date_text(instant)} {time_text(instant)}"


def attempts_text(made: int, allowed: int) -> str:
    """リトライ n／6 回目 (attempts made so far out of the day's allowance)."""
    if made == 0:
        return f"リトライ前（0／{allowed}）"
    return f"リトライ {min(made, allowed)}／{allowed} 回目"


def next_check_text(phase: str, slot: datetime, now: datetime | None = None) -> str:
    """次回確認 09:40, or the parked wording; the date is added when it is not today."""
    if phase == "next_day":
        return f"{PARKED}　次回確認 {datetime_text(slot)}"
    same_day = now is not None and to_local(now).date() == to_local(slot).date()
    when = time_text(slot) if same_day else datetime_text(slot)
    return f"次回確認 {when}"


def outcome_text(outcome: str, detail: str = "") -> str:
    """The whole wording of an ending (自動補正 with its reason)."""
    if outcome == "resumed":
        return RESUMED
    if detail.startswith("R3"):
        return AUTO_CORRECTED_REPLACED
    return AUTO_CORRECTED


def event_text(event: str, attempt_no: int | None, missing: list[str], detail: str) -> str:
    """One history line for staff."""
    kinds = kinds_text(missing)
    if event == "reported":
        text = f"エラー検知：{kinds} が{NOT_LINKED}"
        # Detected too close to the OSS close for a same-day attempt: parked at once.
        return f"{text}（{PARKED}）" if detail.startswith("parked") else text
    if event == "merged":
        return f"追加のエラー検知：{kinds}"
    if event == "attempt":
        still = f"{kinds} がまだ未連携" if kinds else "すべて連携済み"
        return f"リトライ {attempt_no} 回目の確認：{still}"
    if event == "parked":
        return PARKED
    if event in ("resumed", "auto_corrected"):
        prefix = f"リトライ {attempt_no} 回目の確認：" if attempt_no else ""
        return prefix + outcome_text(event, detail)
    if event == "duplicate":
        return "同じエラーの再通知（処理済みのため記録のみ）"
    return event


def no_record_text(office: str, application: str) -> str:
    """``status --application`` for an application with no retry record at that office."""
    return f"事務所 {office}：申請 {application} は{RETRY_TABLE}の記録がありません"
