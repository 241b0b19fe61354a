"""retry_pipeline: re-check missing electronic certificates before auto-correcting.

The pure core (clock, calendar, policy, model, rules, errors) imports no Celery,
Redis or SQLAlchemy; adapters live in ``retry_pipeline.adapters``.
"""

__version__ = "0.1.0"
