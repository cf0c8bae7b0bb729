"""A small Python client for torchferry's own protocols (V2 over HTTP/JSON, and /predict)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from torchferry.bearer import auth_headers
from torchferry.codecs.datatypes import V2_TO_NUMPY, datatype_of
from torchferry.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    TooManyRequests,
    TorchferryError,
    Unauthenticated,
)

_ERRORS: dict[int, type[TorchferryError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: PermissionDenied,
    429: TooManyRequests,
    404: ModelNotFound,
    413: PayloadTooLarge,
    503: Overloaded,
    504: InferenceTimeout,
    500: ModelError,
}


def _encode(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = datatype_of(array)
    if datatype == "BYTES":
        data: Any = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    else:
        data = np.ascontiguousarray(array).ravel()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def _decode(tensor: dict[str, Any]) -> np.ndarray:
    dtype = V2_TO_NUMPY[tensor["datatype"]]
    if tensor["datatype"] == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in tensor["data"]]
        return np.array(values, dtype=object).reshape(tensor["shape"])
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])


class Client:
    """``Client("http://127.0.0.1:8080").infer("digits", {"pixels": array})``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        timeout: float = 60.0,
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``token``: a bearer token for a server run with ``--auth`` (default: the
        ``TORCHFERRY_TOKEN`` variable, if set). ``verify``: for an https server whose CA the
        system does not trust, a context that does (``ssl.create_default_context(cafile=CA)``),
        with a client certificate loaded under mutual TLS (``context.load_cert_chain(CERT,
        KEY)``)."""
        self.url = url.rstrip("/")
        headers = auth_headers(token)
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=headers, verify=verify
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- health and metadata ---------------------------------------------------------------------

    def live(self) -> bool:
        return self._http.get("/v2/health/live").status_code == 200

    def ready(self) -> bool:
        return self._http.get("/v2/health/ready").status_code == 200

    def server_metadata(self) -> dict[str, Any]:
        return self._json(self._http.get("/v2"))

    def metadata(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        return self._json(self._http.get(self._model_path(model, version)))

    # -- inference -------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        version: int | str | None = None,
        outputs: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """V2 infer: named arrays in, named arrays out."""
        request: dict[str, Any] = {"inputs": [_encode(n, a) for n, a in inputs.items()]}
        if outputs:
            request["outputs"] = [{"name": n} for n in outputs]
        body = self.send(f"{self._model_path(model, version)}/infer", request)
        return {t["name"]: _decode(t) for t in body["outputs"]}

    def predict(
        self, model: str | None = None, data: Any = None, image: Path | bytes | None = None
    ) -> Any:
        """``/predict``: JSON ``data`` or one image; returns the ``result`` list."""
        path = "/predict" if model is None else f"/predict/{model}"
        if image is not None:
            content = image if isinstance(image, bytes) else Path(image).read_bytes()
            response = self._http.post(path, files={"file": ("image", content)})
        else:
            response = self._http.post(
                path,
                content=orjson.dumps({"data": data}, option=orjson.OPT_SERIALIZE_NUMPY),
                headers={"content-type": "application/json"},
            )
        return self._json(response)["result"]

    def send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body to any route and return the decoded JSON answer."""
        response = self._http.post(
            path,
            content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            headers={"content-type": "application/json"},
        )
        return self._json(response)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _model_path(model: str, version: int | str | None) -> str:
        path = f"/v2/models/{model}"
        return path if version is None else f"{path}/versions/{version}"

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            body = {"error": response.text}
        if response.status_code >= 400:
            message = body.get("error", response.text) if isinstance(body, dict) else response.text
            error = _ERRORS.get(response.status_code, TorchferryError)
            raise error(f"{response.status_code}: {message}")
        return body
