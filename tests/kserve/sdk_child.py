"""The pytest side of :mod:`kserve_probe`: the KServe SDK runs in a child process only (its
protos clash with tritonclient's and ours in protobuf's default pool; see kserve_probe)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import Any

PROBE = Path(__file__).with_name("kserve_probe.py")


class SdkChild:
    """``kserve_probe.py`` started now, so that its seconds of ``import kserve`` overlap
    whatever the caller does before the first :meth:`ask`; it then answers every request."""

    def __init__(self) -> None:
        # a file, not a pipe: nobody reads stderr until something fails, and a full pipe
        # would block the child. Closed by close(), as the process ends.
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(PROBE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.reader = ThreadPoolExecutor(1)

    def ask(self, command: str, request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"command": command, "request": request}) + "\n")
        self.process.stdin.flush()
        line = self.reader.submit(self.process.stdout.readline)
        try:
            out = line.result(timeout)
        except FutureTimeout:
            self.close()
            raise AssertionError(f"kserve_probe.py {command}: no answer in {timeout} s") from None
        if not out:
            self.process.wait()
            errors = self.errors()
            self.close()
            raise AssertionError(
                f"kserve_probe.py {command} exited {self.process.returncode}:\n{errors}"
            )
        answer = json.loads(out)
        assert isinstance(answer, dict), out
        return answer

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the child ends at the end of its input
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.shutdown()
        self.stderr.close()

    def __enter__(self) -> SdkChild:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def kserve_imported() -> list[str]:
    """The KServe SDK's modules this (the pytest) process has imported: there must be none."""
    return sorted(name for name in sys.modules if name == "kserve" or name.startswith("kserve."))
