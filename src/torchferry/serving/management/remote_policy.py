"""Which remote model sources a management load may fetch: pure rules over a URL, the
server's settings and the addresses a host resolves to (no network here).

- Only ``https://``. No user info (``https://allowed.com@evil.com/`` is refused, never
  read one way here and another way by the HTTP client), no backslash, no control or
  non-ASCII character, no dot segment (``/a/../b``, ``%2e%2e``) and no encoded separator
  (``%2f``, ``%5c``) in the path: what is matched is exactly what is fetched.
- The URL is normalized (scheme and host lowercased, a trailing dot and port 443 dropped,
  an IPv6 literal written compressed, the fragment dropped) and an ``--allowed-urls``
  regular expression must match all of it (``re.fullmatch``: ``https://a\\.com/.*`` does
  not allow ``https://a.com.evil.net/``). None given: every remote URL is refused.
- Every address the host resolves to must be public: loopback, private, link-local,
  shared (CGNAT), multicast, reserved, unspecified and cloud metadata addresses are refused,
  also when written inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64),
  unless an ``--allow-url-network`` contains them. Each non-public form is judged on its
  own: allowing a wrapper (``2002::/16``) does not open the IPv4 inside it (``127.0.0.1``).
  An IPv4-mapped or NAT64 (``64:ff9b::/96``) address only spells an IPv4 address, so that
  IPv4 address alone is judged (NAT64 of a public address is public, for DNS64 sites).
  A metadata address needs a network that names it alone (``169.254.169.254/32``):
  allowing ``169.254.0.0/16`` does not open it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from torchferry.errors import InvalidInput, SourceRefused
from torchferry.serving.settings import ServerSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HTTPS_PORT = 443
#: What a remote source may be, by the file name its URL ends with: a single file that the
#: staging verifies (a .mar's zip checks, an ONNX graph's parse), no folder to unpack.
REMOTE_SUFFIXES = (".mar", ".onnx")

#: Instance metadata services, which hand out cloud credentials to whoever asks: AWS, GCP,
#: Azure, OpenStack (169.254.169.254), AWS ECS task metadata (169.254.170.2), AWS IPv6
#: (fd00:ec2::254), Alibaba (100.100.100.200), Azure's wire server (168.63.129.16, a public
#: address), Oracle (192.0.0.192).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_FORBIDDEN_CHARACTERS = re.compile(r"[^\x21-\x7e]")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote source (any ``scheme://`` but ``file://``)."""
    match = _SCHEME.match(url.strip())
    return match is not None and match.group(1).lower() != "file"


@dataclass(frozen=True)
class RemoteUrl:
    """A remote URL as it will be matched and fetched."""

    #: Lowercased ASCII (IDNA) name without a trailing dot, or an IP address (IPv6 without
    #: brackets, compressed).
    host: str
    port: int
    #: The path and query as sent (``/models/a.mar?x=1``).
    target: str

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header and the normalized URL write it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == HTTPS_PORT else f"{host}:{self.port}"

    @property
    def text(self) -> str:
        """The normalized URL, which ``--allowed-urls`` patterns match."""
        return f"https://{self.authority}{self.target}"

    @property
    def shown(self) -> str:
        """The URL for messages and logs: without its query, which may carry a token (a
        pre-signed URL's signature)."""
        path, query = self.target.partition("?")[::2]
        return f"https://{self.authority}{path}" + ("?..." if query else "")

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def literal(self) -> IPAddress | None:
        """The address when the host is written as one (nothing to resolve)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_remote_url(url: str) -> RemoteUrl:
    """``url`` normalized, or SourceRefused (not https, user info, a path that could be
    read two ways) or InvalidInput (malformed)."""
    text = url.strip()
    if "\\" in text:
        raise SourceRefused("a remote URL may not contain a backslash")
    if _FORBIDDEN_CHARACTERS.search(text):
        raise InvalidInput(
            "a remote URL may not contain spaces, control or non-ASCII characters; "
            "percent-encode them (a host in punycode: xn--...)"
        )
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme != "https":
        shown = f"{scheme}://" if scheme else text
        raise SourceRefused(
            f"remote sources must use https:// ({shown} is refused): a download over "
            "anything else can be read or changed on its way"
        )
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise SourceRefused(
            "a remote URL may not carry user info (user:password@): give the host alone"
        )
    host = _host(parts.netloc, parts.hostname)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidInput(f"remote URL https://{parts.netloc}: the port is not 1-65535")
    path = parts.path or "/"
    _check_path(path)
    target = f"{path}?{parts.query}" if parts.query else path
    return RemoteUrl(host=host, port=port or HTTPS_PORT, target=target)


def _host(netloc: str, hostname: str | None) -> str:
    if not hostname:
        raise InvalidInput(f"remote URL https://{netloc}: it names no host")
    if netloc.startswith("["):
        if "%" in hostname:
            raise InvalidInput(f"remote URL https://{netloc}: an IPv6 zone is not allowed")
        try:
            return str(ipaddress.IPv6Address(hostname))
        except ValueError:
            raise InvalidInput(f"remote URL https://{netloc}: not an IPv6 address") from None
    name = hostname.removesuffix(".")  # ``a.com.`` is ``a.com``, to DNS and to a pattern
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(name) or any(len(label) > 63 for label in name.split(".")):
        raise InvalidInput(f"remote URL https://{netloc}: {hostname!r} is not a host name")
    return name


def _check_path(path: str) -> None:
    for segment in path.split("/"):
        decoded = unquote(segment)
        if decoded in (".", ".."):
            raise SourceRefused(
                "a remote URL's path may not contain '.' or '..' segments (encoded or not): "
                "give the path the file really has"
            )
        if "/" in decoded or "\\" in decoded:
            raise SourceRefused("a remote URL's path may not contain an encoded '/' or '\\'")


def check_allowed(url: RemoteUrl, settings: ServerSettings) -> None:
    """SourceRefused unless an ``--allowed-urls`` pattern matches all of ``url``."""
    if not settings.allowed_urls:
        raise SourceRefused(
            f"remote sources are off ({url.shown}): start the server with --allowed-urls "
            "REGEX (repeatable; matched against the whole URL, e.g. "
            "'https://models\\.example\\.com/.*'), or copy the model under a source root "
            "(--model-source-root) and give its path"
        )
    if not any(re.fullmatch(pattern, url.text) for pattern in settings.allowed_urls):
        raise SourceRefused(
            f"{url.shown} matches no --allowed-urls pattern (a pattern must match the whole "
            "URL, as normalized: https://host[:port]/path[?query], host lowercased, port 443 "
            "dropped)"
        )


def remote_file_name(url: RemoteUrl) -> str:
    """The file name the URL's path ends with; InvalidInput unless it is a .mar or .onnx."""
    name = unquote(url.path.rsplit("/", 1)[-1])
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in REMOTE_SUFFIXES:
        raise InvalidInput(
            f"{url.shown}: a remote source must be a .mar or an .onnx file (the URL's path "
            "ends with its file name); an archive folder is loaded from a local path"
        )
    return name


def parse_networks(texts: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(text) for text in texts]


def _forms(address: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``address`` may reach, the IPv4 inside first (it names
    the host). An IPv4-mapped or NAT64 address is only a spelling of its IPv4 address (the
    connection goes there, and nowhere else), so that IPv4 address is its one form; a 6to4,
    Teredo or IPv4-compatible address is an IPv6 address of its own as well."""
    if not isinstance(address, ipaddress.IPv6Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    found: list[IPAddress] = [a for a in (address.sixtofour,) if a is not None]
    if address.teredo is not None:
        found.append(address.teredo[1])  # the client's address
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [*found, address]


def _category(address: IPAddress) -> str | None:
    """What makes ``address`` unfit to fetch from; None for a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


def _allows(network: IPNetwork, form: IPAddress) -> bool:
    if form in METADATA_ADDRESSES and network.num_addresses != 1:
        return False  # a metadata address is opened only by naming it alone
    return form.version == network.version and form in network


def address_refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a download may not connect to ``address`` (None: it may). Every form of the
    address (itself and any IPv4 inside it) must be public or inside an allowed network
    that contains that form: a network that holds one form opens no other."""
    for form in _forms(address):
        category = _category(form)
        if category is None or any(_allows(network, form) for network in allowed):
            continue
        shown = str(address) if form == address else f"{address} (that is {form})"
        return f"{shown} is {category}"
    return None
