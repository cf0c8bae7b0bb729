"""One child process with the KServe SDK for every test here (see kserve_probe)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdk_child import SdkChild


@pytest.fixture(scope="package", autouse=True)
def kserve_sdk() -> Iterator[SdkChild]:
    """Started with the package's first test (autouse), so that its seconds of ``import
    kserve`` overlap what comes before the first request (building layouts, starting servers).
    With no ``__init__.py`` here pytest ends it with the session: an idle ~140 MiB process."""
    with SdkChild() as child:
        yield child
