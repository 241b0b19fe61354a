"""Celery settings only (DESIGN 9), derived from the same ``RETRY_PIPELINE_*`` settings as the rest.

Read by ``retry_pipeline.tasks`` with ``app.config_from_object("celeryconfig")``.
Secrets (a Redis password in the URL) come only from the environment or a file
(``RETRY_PIPELINE_BROKER_URL_FILE``). Message signing is set up in ``retry_pipeline/signing.py``.
"""

from kombu import Exchange, Queue

from retry_pipeline import names
from retry_pipeline.config import Settings

_settings = Settings.from_env()  # RETRY_PIPELINE_*, secrets also from their *_FILE

broker_url = _settings.broker_url

# JSON only; pickle is refused by configuration.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
task_ignore_result = True  # outcomes travel through the outbox, not result backends
result_expires = None  # no results kept, so beat needs no backend_cleanup entry

# A message is acknowledged after its task ran; a worker killed mid-task gives it back.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Simulations on a scaled clock set a few real seconds (still above one slot).
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
if _settings.visibility_timeout_s < 1000:
    # Redis: a short visibility timeout (tests, fault runs) is only useful if the unacked
    # sweep runs as often; kombu's default sweep is about every 100 s.
    broker_transport_options.update(
        unacked_restore_interval=max(1, _settings.visibility_timeout_s // 10),
        unacked_restore_throttle=1,
    )
broker_connection_retry_on_startup = True

_queue = _settings.queue
_examination = _settings.examination_queue
task_default_queue = _queue
task_queues = (
    Queue(_queue, Exchange(_queue), routing_key=_queue),
    Queue(_examination, Exchange(_examination), routing_key=_examination),
)
task_routes = {names.EXAMINATION_TASKS: {"queue": _examination, "routing_key": _examination}}
task_create_missing_queues = True

timezone = "Asia/Tokyo"
enable_utc = True

# Flower: task events on by default.
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False

# Beat records its heartbeat and every grid tick it sends (retry-pipeline health).
beat_scheduler = "retry_pipeline.heartbeat:HeartbeatScheduler"

# Undecodable messages (pickle, broken JSON) and unknown tasks become dead letters.
worker_consumer = "retry_pipeline.worker:DeadLetterConsumer"
