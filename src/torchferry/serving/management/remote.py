"""Fetch a remote model source (``POST /models?url=https://...``) into a temporary folder
of the store, for the staging to verify and import; the folder goes whatever happens.

Each hop (the URL, then every redirect, at most ``MAX_REDIRECTS``) passes the rules of
:mod:`remote_policy` first: https, an ``--allowed-urls`` match, and every address its host
resolves to public or allowed. The connection then goes to one of those *checked*
addresses, never to the name again (a DNS answer that changes between the check and the
connection cannot redirect it), while TLS still sends the name (SNI) and verifies the
certificate for it, against the system's CAs plus ``--url-ca-bundle``. No proxy from the
environment, no compression (the bytes counted are the bytes written), no cookies.

Limits: ``--max-download-size`` (a larger Content-Length is refused before reading, and
the body is cut off as soon as it passes), ``--download-timeout`` for all of it. Status:
403 for a policy refusal, 413 too large, 502 an unreachable or failing remote, 504 late.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import IO
from urllib.parse import urljoin

import httpx

from torchferry._version import __version__
from torchferry.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    RemoteSourceFailed,
    RemoteSourceTimeout,
    SourceRefused,
)
from torchferry.serving.management.remote_policy import (
    IPAddress,
    IPNetwork,
    RemoteUrl,
    address_refusal,
    check_allowed,
    parse_networks,
    parse_remote_url,
    remote_file_name,
)
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tls import TLSConfigError, download_context
from torchferry.store_layout import is_model_name

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
#: A blackholed address must not eat the whole deadline before the next one is tried.
_CONNECT_TIMEOUT_S = 10.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """A downloaded source, alive until its context ends."""

    path: Path
    #: The URL for the version's description (its query left out).
    shown: str
    #: The model name when the caller gives none and the file carries none (an ``.onnx``
    #: named by its URL's file name); None for a ``.mar``, which names itself.
    name: str | None


@asynccontextmanager
async def fetch_remote(url: str, settings: ServerSettings) -> AsyncIterator[Fetched]:
    """Download ``url`` (already known to be remote) under the store; the file is removed
    when the context ends, staged or not."""
    first = parse_remote_url(url)
    check_allowed(first, settings)
    file_name = remote_file_name(first)
    if settings.store is None or settings.model_dir is not None:
        raise Conflict("loading from a URL needs a model store (serve --store DIR)")
    folder = Path(tempfile.mkdtemp(prefix=".download-", dir=settings.store))
    try:
        path = folder / _local_name(file_name)
        try:
            async with asyncio.timeout(settings.download_timeout_s):
                await _download(first, settings, path)
        except TimeoutError:
            raise RemoteSourceTimeout(
                f"{first.shown} was not downloaded within {settings.download_timeout_s:g} s "
                "(--download-timeout)"
            ) from None
        stem = file_name.rsplit(".", 1)[0]
        name = stem if path.suffix == ".onnx" and is_model_name(stem) else None
        yield Fetched(path=path, shown=first.shown, name=name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _local_name(file_name: str) -> str:
    """The URL's file name if its stem could name a model (the store's one rule), else
    ``download.SUFFIX`` (the importer's messages name the file; the name never leaves the
    temporary folder)."""
    stem, suffix = file_name.rsplit(".", 1)
    return f"{stem if is_model_name(stem) else 'download'}.{suffix.lower()}"


def _tls(settings: ServerSettings) -> ssl.SSLContext:
    try:
        return download_context(settings.url_ca_bundle)
    except TLSConfigError as exc:  # checked at start: the file has changed since
        raise RemoteSourceFailed(exc.message) from None


async def _download(first: RemoteUrl, settings: ServerSettings, path: Path) -> None:
    networks = parse_networks(settings.allowed_url_networks)
    context = _tls(settings)
    current = first
    for _hop in range(MAX_REDIRECTS + 1):
        addresses = await _checked_addresses(current, networks)
        location = await _get(current, addresses, context, settings, path)
        if location is None:
            return
        try:
            following = parse_remote_url(urljoin(current.text, location))
            check_allowed(following, settings)
        except (SourceRefused, InvalidInput) as exc:
            raise SourceRefused(
                f"{current.shown} redirects to a URL that is refused: {exc.message}"
            ) from None
        current = following
    raise SourceRefused(f"{first.shown} redirects more than {MAX_REDIRECTS} times")


async def _checked_addresses(url: RemoteUrl, networks: list[IPNetwork]) -> list[IPAddress]:
    """Every address of the URL's host, once each; SourceRefused if any is refused (a
    name with one private address among public ones is a rebinding trick)."""
    literal = url.literal
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                url.host, url.port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise RemoteSourceFailed(f"{url.shown}: cannot resolve {url.host}: {exc}") from None
        addresses = []
        for *_, sockaddr in found:
            address = _address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
    for address in addresses:
        refusal = address_refusal(address, networks)
        if refusal is not None:
            hint = f"--allow-url-network {address}/{address.max_prefixlen}"
            raise SourceRefused(
                f"{url.shown}: {url.host} resolves to {refusal}; downloads reach public "
                f"addresses only, unless allowed ({hint})"
            )
    return addresses


def _address(text: str) -> IPAddress:
    return ip_address(text.split("%", 1)[0])  # a link-local address's zone is not its own


async def _get(
    url: RemoteUrl,
    addresses: list[IPAddress],
    context: ssl.SSLContext,
    settings: ServerSettings,
    path: Path,
) -> str | None:
    """GET ``url`` from the first of ``addresses`` that connects: the body into ``path``
    (None returned), or the Location of a redirect."""
    failures: list[str] = []
    for address in addresses:
        request_url = httpx.URL(scheme="https", host=str(address), port=url.port)
        request_url = request_url.copy_with(raw_path=url.target.encode("ascii"))
        headers = {
            "Host": url.authority,
            "Accept-Encoding": "identity",
            "User-Agent": f"torchferry/{__version__}",
        }
        # TLS for the name, over a connection to the checked address
        extensions = {} if url.literal is not None else {"sni_hostname": url.host}
        timeout = httpx.Timeout(None, connect=_CONNECT_TIMEOUT_S)
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=timeout) as client:
            try:
                async with client.stream(
                    "GET", request_url, headers=headers, extensions=extensions
                ) as response:
                    return await _answer(url, response, settings, path)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{address}: {_reason(exc)}")
            except httpx.TransportError as exc:
                raise RemoteSourceFailed(f"{url.shown}: {_reason(exc)}") from None
    raise RemoteSourceFailed(f"{url.shown}: cannot connect ({'; '.join(failures)})")


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"its TLS certificate does not verify ({text}); --url-ca-bundle adds a CA"
    return text


async def _answer(
    url: RemoteUrl, response: httpx.Response, settings: ServerSettings, path: Path
) -> str | None:
    if response.status_code in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise RemoteSourceFailed(
                f"{url.shown} answered {response.status_code} without a Location"
            )
        return location
    if response.status_code != 200:
        raise RemoteSourceFailed(f"{url.shown} answered {response.status_code}, not 200")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise RemoteSourceFailed(
            f"{url.shown} answered in Content-Encoding {encoding!r} although asked for none"
        )
    limit = settings.max_download_bytes
    too_large = PayloadTooLarge(
        f"{url.shown} is larger than the {limit} bytes a download may be (--max-download-size)"
    )
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    with path.open("wb") as sink:
        await _copy(response, sink, limit, too_large)
    return None


async def _copy(
    response: httpx.Response, sink: IO[bytes], limit: int, too_large: PayloadTooLarge
) -> None:
    received = 0
    async for chunk in response.aiter_raw(_CHUNK):
        received += len(chunk)
        if received > limit:
            raise too_large
        sink.write(chunk)
