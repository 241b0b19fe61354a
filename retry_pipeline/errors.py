"""One exception tree for the whole package."""

from __future__ import annotations


class RetryPipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RetryPipelineError):
    """A setting (environment variable) has a value the pipeline cannot use."""


class InvalidInstant(RetryPipelineError):
    """A time was given without a UTC offset, or could not be parsed."""


class CalendarError(RetryPipelineError):
    """No business day with review hours within the search horizon."""


class InvalidReport(RetryPipelineError):
    """A missing-certificate report breaks the message contract."""


class NotARetryTarget(InvalidReport):
    """R1: the (procedure, certificate) pair is not one this system retries."""


class StoreError(RetryPipelineError):
    """The retry table refused an operation (e.g. ending a chain twice)."""


class DuplicateRecord(StoreError):
    """An insert met a record another transaction wrote first (R4: one per application)."""


class RegistryUnavailable(RetryPipelineError):
    """Kei-MOTAS could not be read (unreachable, timed out): decide nothing, try again."""


class DeliveryFailed(RetryPipelineError):
    """Outcomes could not all be handed to the examination side; the relay sends the rest.

    ``handed``: how many, from the first, certainly went before the failure (0 when the
    broker cannot tell, e.g. a batched publish whose flush failed; a re-send is harmless,
    every outcome carries its idempotency key).
    """

    def __init__(self, handed: int) -> None:
        super().__init__(f"delivery stopped after {handed} outcome(s)")
        self.handed = handed


class MessageRefused(RetryPipelineError):
    """A message was refused and is already kept as a dead letter.

    Its task fails with this error, whose message is the reason, so Flower lists it
    under Failed; it is expected (no retry, no second dead letter, no traceback).
    """
