"""Every name of the message contract in one module (as arq's ``constants.py``).

Task names are the public interface: the examination worker sends reports by name,
beat sends the tick, and outcomes go to the examination side by name. Queue names
and the outcome task names are settings (``config.py``); these are their defaults.
"""

from __future__ import annotations

REPORT_MISSING = "retry_pipeline.report_missing"
REPORT_MISSING_BATCH = "retry_pipeline.report_missing_batch"
ATTEMPT = "retry_pipeline.attempt"  # one chain's attempt: decided through its slot
ATTEMPT_SLOT = "retry_pipeline.attempt_slot"
TICK = "retry_pipeline.tick"
CLOSE = "retry_pipeline.close"
CONFIRM_OUTCOME = "retry_pipeline.confirm_outcome"
PURGE_DEAD_LETTERS = "retry_pipeline.purge_dead_letters"  # daily retention (beat)

DEFAULT_QUEUE = "retry_pipeline"  # reports, attempts, the tick
DEFAULT_EXAMINATION_QUEUE = "examination"  # outcomes
DEFAULT_RESUME_TASK = "examination.resume_pre_review"
DEFAULT_AUTO_CORRECT_TASK = "examination.auto_correct"
DEFAULT_REPORT_RECEIVED_TASK = "examination.report_received"  # receipts (DESIGN 11)
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
EXAMINATION_TASKS = "examination.*"  # routed to the examination queue (celeryconfig)
