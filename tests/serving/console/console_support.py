"""What the console's browser tests share besides fixtures: the served console, where its
artifacts go, and the axe-core impacts that fail a page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchferry.serving.process import ServerProcess

#: axe-core's impacts that fail a page
BLOCKING_IMPACTS = ("serious", "critical")


@dataclass
class Console:
    server: ServerProcess
    #: who -> token text
    tokens: dict[str, str]
    store: Path
    sources: Path
    artifacts: Path

    @property
    def url(self) -> str:
        return f"{self.server.management_url}/console/"

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
