"""The protocols' lean response objects write exactly the headers Starlette's would."""

from __future__ import annotations

import pytest
from starlette.responses import Response

from torchferry.codecs.jsonio import dumps
from torchferry.serving.protocols.common import BytesResponse, JSONResponse


@pytest.mark.parametrize("status", [200, 400, 404, 503, 204, 304])
def test_json_response_headers_are_starlettes(status):
    content = {"error": "x", "values": [1.5, 2]}
    ours = JSONResponse(content, status_code=status)
    theirs = Response(dumps(content), status_code=status, media_type="application/json")
    assert (ours.status_code, ours.body, ours.raw_headers) == (
        theirs.status_code,
        theirs.body,
        theirs.raw_headers,
    )
    with_header = JSONResponse(content, status_code=status, headers={"Retry-After": "2"})
    assert with_header.raw_headers[0] == (b"retry-after", b"2")


def test_bytes_response_headers_are_starlettes():
    body = b'{"outputs": []}\x00\x01'
    ours = BytesResponse(
        body, b"application/octet-stream", ((b"inference-header-content-length", b"15"),)
    )
    theirs = Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": "15"},
    )
    assert (ours.status_code, ours.body, ours.raw_headers) == (200, theirs.body, theirs.raw_headers)
    assert (
        BytesResponse(b"{}", b"application/json").raw_headers
        == Response(b"{}", media_type="application/json").raw_headers
    )
