"""Just enough of a Dockerfile reader for the image tests: stages and their instructions,
with continuation lines joined and comments dropped (the syntax the project's Dockerfile
uses; no parser directive or heredoc)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: Docker's PATH when an image sets none (the Debian-based python images keep it).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def assignments(self, keyword: str) -> dict[str, str]:
        """``ARG``/``ENV`` ``KEY=VALUE`` pairs of this stage, later ones winning; ``${VAR}`` in
        a value expands to what this stage set before it (PATH starts as Docker's)."""
        values: dict[str, str] = {"PATH": DEFAULT_PATH} if keyword == "ENV" else {}
        for rest in self.all(keyword):
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                for name, known in values.items():
                    value = value.replace(f"${{{name}}}", known)
                values[key] = value
        return values


def read_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            words = rest.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 else None))
        elif stages:  # an ARG before the first FROM only parameterises FROM lines
            stages[-1].instructions.append((keyword.upper(), rest.strip()))
    return stages
