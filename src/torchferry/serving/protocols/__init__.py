"""Wire protocols, one module each, every one mapping its wire format to named numpy arrays.

A new protocol is a new module with a ``router`` plus one line here; the serving core never
imports a protocol.
"""

from __future__ import annotations

from types import ModuleType

from torchferry.serving.protocols import simple, torchserve, v1, v2

PROTOCOLS: list[ModuleType] = [v2, v1, simple, torchserve]
