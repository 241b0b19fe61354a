"""The use cases (service layer), one module each, over the ports of ``retry_pipeline.ports``.

- ``intake``: reports (R1, R3, R4): read, ``intake.decide_report``, write.
- ``slots``: the attempts of a slot (R8, R10, R11): read, ``attempts.decide_attempt``, write.
- ``grid``: the grid tick (DESIGN 4): re-send what is due and did not run.
- ``closing``: the OSS close (R10): park every live chain.
- ``outcomes``: endings into the outbox and the relay to the examination side (DESIGN 5).
- ``receipts``: every report taken gets a receipt to the examination side (DESIGN 11).
- ``letters``: the one way a refused message is kept.
- ``pipeline``: ``Pipeline``, the entry point that tasks and the CLI call.
"""
