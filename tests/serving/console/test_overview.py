"""A version's signature status as the Models page shows it, from the fleet's own records."""

from __future__ import annotations

from torchferry.errors import SIGNATURE_REFUSED
from torchferry.serving.console.overview import signature_of, version_view
from torchferry.serving.lifecycle.steps import VersionInfo


def test_signature_status():
    def ready(signature: str) -> VersionInfo:
        return VersionInfo("m", 1, "ready", record={"signature": signature, "path": "/s/m/1"})

    assert signature_of(ready("verified")) == ("signed", "verified")
    # signed, but no trusted key checked it: never shown as "signed"
    assert signature_of(ready("unverified")) == ("unverified", "unverified")
    assert signature_of(ready("unsigned")) == ("unsigned", "unsigned")
    assert signature_of(VersionInfo("m", 1, "loading")) == ("unknown", None)
    refusal = f"model 'm' version 2: {SIGNATURE_REFUSED}: the files do not match"
    failed = VersionInfo("m", 2, "failed", reason=refusal)
    assert signature_of(failed) == ("refused", refusal)
    other = VersionInfo("m", 2, "failed", reason="no such file")
    assert signature_of(other) == ("unknown", None)


def test_version_fields_without_a_record_are_null():
    view = version_view(VersionInfo("m", 2, "failed", reason="boom"), 1, {})
    assert view["state"] == "failed" and view["reason"] == "boom"
    assert (view["is_default"], view["weight"], view["runtime"], view["source"]) == (
        False, None, None, None,
    )  # fmt: skip
    weighted = version_view(
        VersionInfo("m", 1, "ready", record={"path": "/s/m/1", "runtime": "onnxruntime"}),
        1,
        {1: 90, 2: 10},
    )
    assert (weighted["is_default"], weighted["weight"], weighted["source"]) == (True, 90, "/s/m/1")
    assert weighted["runtime"] == "onnxruntime"
