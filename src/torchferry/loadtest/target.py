"""The server under test: where it is, its model's V2 metadata, and its batch statistics.

Only standard V2 calls (HTTP ``GET /v2/models/NAME``, ``.../stats``; gRPC ``ModelMetadata``,
``ModelStatistics``), so a Triton-compatible server answers them as torchferry does; a server
that lacks them (TorchServe) still runs, with inputs given and no batch statistics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from torchferry.bearer import auth_headers
from torchferry.loadtest.pool import Endpoint

PROTOCOLS = ("v2-json", "v2-binary", "grpc", "predict", "torchserve")
GRPC_SERVICE = "inference.GRPCInferenceService"


class BenchError(Exception):
    """A mistake the user can fix (a bad argument, a server that is down, an unknown model):
    reported in one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Target:
    url: str  # "http://host:port[/prefix]" or "grpc://host:port"
    endpoint: Endpoint
    model: str
    version: str | None
    token: str | None
    #: The URL's path (no trailing slash): the server answers under it (a reverse proxy's
    #: route, Ray Serve's route prefix), so every HTTP request path starts with it.
    prefix: str = ""
    #: ``--header KEY=VALUE``: sent with every call (HTTP headers; gRPC metadata).
    extra_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(
        cls,
        url: str,
        model: str,
        version: str | None,
        token: str | None,
        grpc: bool,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> Target:
        text = url if "://" in url else f"{'grpc' if grpc else 'http'}://{url}"
        parts = urlsplit(text)
        if parts.scheme == "https":
            raise BenchError("https is not supported by the load generator; bench over http")
        if parts.scheme not in ("http", "grpc") or not parts.hostname:
            raise BenchError(f"URL {url!r}: expected http://HOST:PORT (grpc: HOST:PORT)")
        if grpc and parts.scheme != "grpc" and parts.path not in ("", "/"):
            raise BenchError(f"URL {url!r}: a gRPC target is HOST:PORT")
        try:
            port = parts.port or (8081 if grpc else 80)
        except ValueError:
            raise BenchError(f"URL {url!r}: the port is not a number") from None
        prefix = "" if grpc else parts.path.rstrip("/")
        base = f"{'grpc' if grpc else 'http'}://{parts.hostname}:{port}{prefix}"
        endpoint = Endpoint(parts.hostname, port, grpc)
        return cls(base, endpoint, model, version, token, prefix, extra_headers)

    @property
    def headers(self) -> dict[str, str]:
        return {**dict(self.extra_headers), **auth_headers(self.token)}

    @property
    def v2_path(self) -> str:
        versioned = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{versioned}"

    def _get(self, path: str) -> httpx.Response:
        """GET ``path`` under the URL's prefix (``self.url`` ends with it)."""
        try:
            return httpx.get(self.url + path, headers=self.headers, timeout=10)
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {self.url}: {exc}") from None

    def check_reachable(self) -> None:
        """Fail fast, in one line, when nothing listens at the URL."""
        if self.endpoint.grpc:
            _grpc_call(self, "ServerLive", None)
        else:
            self._get("/")

    def metadata(self) -> dict[str, Any] | None:
        """The model's V2 metadata; None where the server has no V2 (raises for a model the
        server says it does not know)."""
        if self.endpoint.grpc:
            answer = _grpc_call(self, "ModelMetadata", None)
            return {
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in answer.inputs
                ]
            }
        response = self._get(self.v2_path)
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                return None
            return body if isinstance(body, dict) else None
        if response.status_code in (401, 403):
            raise BenchError(f"{self.url} refused the metadata call: give --token")
        if response.status_code == 404 and _error_names_model(response):
            raise BenchError(f"the server at {self.url} has no model {self.model!r}")
        return None

    def batch_counts(self) -> Counter[int] | None:
        """Batches run so far by batch size (V2 statistics); None when the server has none
        or this read failed (a refused or slow call under load, a body not as V2 says): a
        step then goes on without its batches rather than ending the run."""
        if self.endpoint.grpc:
            try:
                answer = _grpc_call(self, "ModelStatistics", None)
            except BenchError:
                return None
            counts: Counter[int] = Counter()
            for stats in answer.model_stats:
                for entry in stats.batch_stats:
                    counts[int(entry.batch_size)] += int(entry.compute_infer.count)
            return counts
        try:
            response = self._get(self.v2_path + "/stats")
            body = response.json() if response.status_code == 200 else {}
        except (BenchError, ValueError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("model_stats"), list):
            return None
        counts = Counter()
        try:
            for stats in body["model_stats"]:
                for entry in stats.get("batch_stats", []):
                    counts[int(entry["batch_size"])] += int(entry["compute_infer"]["count"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return counts

    def max_batch_size(self) -> int | None:
        """The server's max batch size for the model (V2 model configuration), if it says."""
        if self.endpoint.grpc:
            return None
        try:
            response = self._get(self.v2_path + "/config")
            body = response.json() if response.status_code == 200 else {}
        except (BenchError, ValueError):
            return None
        value = body.get("max_batch_size") if isinstance(body, dict) else None
        return int(value) if isinstance(value, int) and value > 0 else None


def _error_names_model(response: httpx.Response) -> bool:
    try:
        return "error" in response.json()
    except ValueError:
        return False


def _grpc_call(target: Target, method: str, request: Any) -> Any:
    import grpc

    from torchferry.serving.protos import inference_pb2 as pb

    messages: dict[str, tuple[Any, Any]] = {
        "ServerLive": (pb.ServerLiveRequest(), pb.ServerLiveResponse),
        "ModelMetadata": (
            pb.ModelMetadataRequest(name=target.model, version=target.version or ""),
            pb.ModelMetadataResponse,
        ),
        "ModelStatistics": (
            pb.ModelStatisticsRequest(name=target.model, version=target.version or ""),
            pb.ModelStatisticsResponse,
        ),
    }
    message, answer_type = messages[method]
    metadata = [(k.lower(), v) for k, v in target.headers.items()]
    with grpc.insecure_channel(target.endpoint.target) as channel:
        call = channel.unary_unary(
            f"/{GRPC_SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=answer_type.FromString,
        )
        try:
            return call(message, timeout=10, metadata=metadata or None)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise BenchError(f"cannot reach {target.url}: {exc.details()}") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise BenchError(
                    f"the server at {target.url} has no model {target.model!r}"
                ) from None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise BenchError(f"{target.url} refused {method}: give --token") from None
            raise BenchError(f"{method} at {target.url} failed: {exc.details()}") from None
