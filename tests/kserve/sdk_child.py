"""The pytest side of :mod:`kserve_probe`: the KServe SDK runs in a child process only (its
protos clash with tritonclient's and ours in protobuf's default pool; see kserve_probe)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("kserve_probe.py")


class SdkChild:
    """``kserve_probe.py <command>`` started now, so that its seconds of ``import kserve``
    overlap whatever the caller does before :meth:`ask` sends the request."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.process = subprocess.Popen(
            [sys.executable, str(PROBE), command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(json.dumps(request), timeout=timeout)
        finally:
            self.close()
        assert self.process.returncode == 0, (
            f"kserve_probe.py {self.command} exited {self.process.returncode}:\n{err}"
        )
        answer = json.loads(out)
        assert isinstance(answer, dict), out
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def kserve_imported() -> list[str]:
    """The KServe SDK's modules this (the pytest) process has imported: there must be none."""
    return sorted(name for name in sys.modules if name == "kserve" or name.startswith("kserve."))
