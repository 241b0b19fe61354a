"""One clock for all code (DESIGN 7): pure functions take ``now``; adapters ask a Clock."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    """Source of the current instant (always timezone-aware, UTC)."""

    def now(self) -> datetime: ...

    def to_real(self, instant: datetime) -> datetime:
        """The wall-clock instant at which ``instant`` comes (Celery ETAs run on real time)."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def to_real(self, instant: datetime) -> datetime:
        return instant


@dataclass
class FixedClock:
    """A clock that only moves when told to (unit tests)."""

    current: datetime

    def now(self) -> datetime:
        return self.current

    def to_real(self, instant: datetime) -> datetime:
        return instant

    def advance(self, seconds: float) -> None:
        self.current = self.current + timedelta(seconds=seconds)


class FileClock:
    """Scaled time shared by several processes through a small JSON file (DESIGN 7).

    The file holds ``origin_sim`` (ISO instant), ``origin_real`` (Unix seconds) and
    ``scale``: simulated time runs ``scale`` times faster than the wall clock from
    that pair. Jumping over an idle night rewrites the file; readers notice the
    change by its modification time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._origin_sim = datetime.now(UTC)
        self._origin_real = time.time()
        self.scale = 1.0

    def _load(self) -> None:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        data = json.loads(self.path.read_text())
        self._origin_sim = datetime.fromisoformat(data["origin_sim"])
        self._origin_real = float(data["origin_real"])
        self.scale = float(data["scale"])
        self._stamp = stamp

    def now(self) -> datetime:
        self._load()
        return self._origin_sim + timedelta(seconds=(time.time() - self._origin_real) * self.scale)

    def to_real(self, instant: datetime) -> datetime:
        """The wall-clock instant at which simulated ``instant`` comes (for Celery ETAs)."""
        self._load()
        real_s = self._origin_real + (instant - self._origin_sim).total_seconds() / self.scale
        return datetime.fromtimestamp(real_s, UTC)

    @staticmethod
    def write(path: str | Path, origin_sim: datetime, scale: float) -> None:
        """Start (or jump) simulated time: ``origin_sim`` is now, running ``scale``× fast."""
        target = Path(path)
        tmp = target.with_suffix(".tmp")
        payload = {
            "origin_sim": origin_sim.astimezone(UTC).isoformat(),
            "origin_real": time.time(),
            "scale": scale,
        }
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, target)  # atomic: readers see the old or the new file


def clock_from(clock_file: str | None) -> Clock:
    """The system clock, or the shared scaled clock when a clock file is configured."""
    return SystemClock() if not clock_file else FileClock(clock_file)
