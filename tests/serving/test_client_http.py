"""``torchferry.Client`` (the project's own client) against the live server's protocols."""

from __future__ import annotations

import numpy as np
import pytest

from torchferry.client import Client
from torchferry.errors import InvalidInput, ModelNotFound


def test_client_speaks_v2_and_predict(live_server):
    with Client(live_server.url) as client:
        assert client.live() and client.ready()
        assert client.metadata("adder", 1)["versions"] == ["1"]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        outputs = client.infer("adder", {"x": x}, version=1, outputs=["y"])
        assert list(outputs) == ["y"]
        np.testing.assert_allclose(outputs["y"], x * 2 + 1)
        text = client.infer("strings", {"text": np.array([b"a", b"b"], dtype=object)})
        assert text["shout"].tolist() == [b"a!", b"b!"]
        assert client.predict("adder", data=[[0, 0, 0, 0]]) == [{"y": [1.0] * 4, "total": 0.0}]
        with pytest.raises(ModelNotFound):
            client.infer("nope", {"x": x})
        with pytest.raises(InvalidInput, match="expected datatype FP32, received INT64"):
            client.infer("adder", {"x": x.astype(np.int64)})
