"""Which version answers a request that names none: a model's routes, made ready for the
hot path.

A model without routes answers with its highest loaded version, as before. With routes
(``lifecycle.state.Routes``, sent by the supervisor):

- ``weights`` {version: weight}: each request draws a version in proportion to the weights;
  a request with a traffic key always draws the same one (``zlib.crc32(key) % total`` over
  the cumulative weights in ascending version order), on every worker, so one user stays
  on one version;
- else ``default``, when set;
- ``shadow``: a version that also sees a mirrored share of the routed requests (``shadow.py``).

Everything a request needs is computed here once, when the routes change: a weighted draw
is one crc32 (or one ``random``) and one bisect over a tuple.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from dataclasses import dataclass

from torchferry.serving.lifecycle.state import Routes


@dataclass(frozen=True, slots=True)
class Route:
    """One model's routes, precomputed."""

    routes: Routes
    #: Weighted versions, ascending, with their cumulative weights (empty: no weights).
    versions: tuple[int, ...]
    bounds: tuple[int, ...]
    total: int
    default: int | None
    shadow: int | None
    shadow_share: float

    @classmethod
    def of(cls, routes: Routes) -> Route:
        versions: list[int] = []
        bounds: list[int] = []
        total = 0
        for version, weight in sorted(routes.weights.items()):
            if weight > 0:
                total += weight
                versions.append(version)
                bounds.append(total)
        shadow = routes.shadow
        return cls(
            routes,
            tuple(versions),
            tuple(bounds),
            total,
            routes.default,
            shadow.version if shadow is not None else None,
            shadow.share if shadow is not None else 0.0,
        )

    def pick(self, key: str | None) -> int | None:
        """The version this request goes to; None: the model's highest loaded version."""
        if not self.total:
            return self.default
        point = zlib.crc32(key.encode()) % self.total if key else random.randrange(self.total)
        return self.versions[bisect_right(self.bounds, point)]

    def named(self) -> set[int]:
        """Every version these routes send traffic to (or mirror it to)."""
        named = set(self.versions)
        if self.default is not None:
            named.add(self.default)
        if self.shadow is not None:
            named.add(self.shadow)
        return named
