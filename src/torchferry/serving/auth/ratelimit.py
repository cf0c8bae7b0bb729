"""A token bucket: ``rate`` requests a second on average, ``burst`` at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    #: Requests that may go now (starts full).
    level: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        if self.level < 0:
            self.level = self.burst

    def take(self, now: float) -> float:
        """Take one request at ``now`` (monotonic seconds): 0.0 when it may go, else the
        seconds until it could."""
        if now > self.updated:
            self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
            self.updated = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate
