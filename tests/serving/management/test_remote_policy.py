"""The rules for remote model sources, as pure functions: URL normalization and the
``--allowed-urls`` match, and which addresses a download may reach."""

from __future__ import annotations

import ipaddress

import pytest

from torchferry.errors import InvalidInput, SourceRefused
from torchferry.serving.management.remote_policy import (
    address_refusal,
    check_allowed,
    is_remote,
    parse_networks,
    parse_remote_url,
    remote_file_name,
)
from torchferry.serving.settings import ServerSettings

ALLOWED = ServerSettings(allowed_urls=[r"https://models\.example\.com/.*\.mar"])


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://models.example.com/a.mar", "https://models.example.com/a.mar"),
        ("HTTPS://Models.EXAMPLE.com/a.mar", "https://models.example.com/a.mar"),
        ("https://models.example.com.:443/a.mar", "https://models.example.com/a.mar"),
        ("https://models.example.com:8443/a.mar", "https://models.example.com:8443/a.mar"),
        ("https://models.example.com/a.mar#frag", "https://models.example.com/a.mar"),
        ("https://models.example.com", "https://models.example.com/"),
        ("https://[0:0::1]:8443/a.mar", "https://[::1]:8443/a.mar"),
        ("https://h.com/a.mar?sig=x", "https://h.com/a.mar?sig=x"),
    ],
)
def test_urls_are_normalized(url: str, normalized: str) -> None:
    assert parse_remote_url(url).text == normalized


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://models.example.com/a.mar", "must use https"),
        ("ftp://models.example.com/a.mar", "must use https"),
        ("https://models.example.com@evil.com/a.mar", "user info"),
        ("https://user:pw@models.example.com/a.mar", "user info"),
        ("https://models.example.com\\@evil.com/a.mar", "backslash"),
        ("https://models.example.com/x/../../admin.mar", "'..' segments"),
        ("https://models.example.com/x/%2e%2E/admin.mar", "'..' segments"),
        ("https://models.example.com/x/%2fadmin.mar", "encoded '/'"),
        ("https://models.example.com/x%5cadmin.mar", "encoded '/'"),
    ],
)
def test_urls_read_two_ways_are_refused(url: str, reason: str) -> None:
    with pytest.raises(SourceRefused, match=reason):
        parse_remote_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://models.example.com/a b.mar",
        "https://models.example.com/a\x00.mar",
        "https://modèls.example.com/a.mar",
        "https://:443/a.mar",
        "https://models.example.com:0/a.mar",
        "https://models.example.com:99999/a.mar",
        "https://[::1%25eth0]/a.mar",
        "https://a..b/a.mar",
    ],
)
def test_malformed_urls_are_bad_requests(url: str) -> None:
    with pytest.raises(InvalidInput):
        parse_remote_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://models.example.com/a.mar",
        "HTTPS://MODELS.EXAMPLE.COM/a.mar",
        "https://models.example.com.:443/dir/a.mar",
    ],
)
def test_a_pattern_matches_the_normalized_url(url: str) -> None:
    check_allowed(parse_remote_url(url), ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://models.example.com.evil.net/a.mar",  # a prefix match would allow it
        "https://models.example.com/a.mar.onnx",  # and a search() this
        "https://evil.net/?https://models.example.com/a.mar",
        "https://models.example.com:8443/a.mar",
        "https://xmodels.example.com/a.mar",
    ],
)
def test_a_pattern_must_match_all_of_the_url(url: str) -> None:
    with pytest.raises(SourceRefused, match="matches no --allowed-urls pattern"):
        check_allowed(parse_remote_url(url), ALLOWED)


def test_no_pattern_refuses_every_url_and_says_how_to_allow_one() -> None:
    with pytest.raises(SourceRefused, match="--allowed-urls") as refused:
        check_allowed(parse_remote_url("https://h.com/a.mar?token=secret"), ServerSettings())
    assert "secret" not in refused.value.message  # a pre-signed URL's query stays out


def test_bad_patterns_and_networks_fail_at_startup() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        ServerSettings(allowed_urls=["https://(unclosed"])
    with pytest.raises(ValueError, match="--allow-url-network"):
        ServerSettings(allowed_url_networks=["10.0.0.1/8"])


def test_remote_file_names() -> None:
    assert remote_file_name(parse_remote_url("https://h.com/d/Model.MAR?x=1")) == "Model.MAR"
    assert remote_file_name(parse_remote_url("https://h.com/m.onnx")) == "m.onnx"
    for url in ("https://h.com/", "https://h.com/m.zip", "https://h.com/model"):
        with pytest.raises(InvalidInput, match=r"\.mar or an \.onnx"):
            remote_file_name(parse_remote_url(url))


def test_which_sources_are_remote() -> None:
    assert is_remote("https://h.com/a.mar") and is_remote(" HTTP://h") and is_remote("s3://b/k")
    assert not is_remote("file:///tmp/a.mar") and not is_remote("models/a.mar")


def _refusal(address: str, *networks: str) -> str | None:
    return address_refusal(ipaddress.ip_address(address), parse_networks(networks))


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "not a public address"),  # shared (CGNAT)
        ("240.0.0.1", "reserved"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("168.63.129.16", "metadata"),  # Azure's: a public address, still refused
        ("::ffff:127.0.0.1", "that is 127.0.0.1"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "2002:7f00:1::"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, category: str) -> None:
    refusal = _refusal(address)
    assert refusal is not None and category in refusal


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_fine(address: str) -> None:
    assert _refusal(address) is None


def test_an_allowed_network_opens_what_it_contains_and_nothing_more() -> None:
    assert _refusal("127.0.0.1", "127.0.0.1/32") is None
    assert _refusal("::ffff:127.0.0.1", "127.0.0.1/32") is None  # the same host
    assert _refusal("127.0.0.2", "127.0.0.1/32") is not None
    assert _refusal("10.20.30.40", "10.0.0.0/8") is None
    assert _refusal("::1", "127.0.0.0/8") is not None
    assert _refusal("::1", "::1/128") is None


def test_a_metadata_address_opens_only_when_named_alone() -> None:
    assert _refusal("169.254.169.254", "169.254.0.0/16") is not None
    assert _refusal("169.254.10.10", "169.254.0.0/16") is None
    assert _refusal("169.254.169.254", "169.254.169.254/32") is None
    assert _refusal("::ffff:169.254.169.254", "0.0.0.0/0") is not None


@pytest.mark.parametrize(
    ("address", "wrapper_network"),
    [
        ("64:ff9b::7f00:1", "64:ff9b::/96"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", "64:ff9b::/96"),  # NAT64 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "64:ff9b::/96"),  # NAT64 of the metadata address
        ("2002:7f00:1::", "2002::/16"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "2002::/16"),  # 6to4 of 10.0.0.1
        ("::7f00:1", "::/96"),  # IPv4-compatible 127.0.0.1
        ("::ffff:127.0.0.1", "::ffff:0:0/96"),  # IPv4-mapped 127.0.0.1
    ],
)
def test_allowing_a_wrapper_network_opens_no_ipv4_inside_it(
    address: str, wrapper_network: str
) -> None:
    refusal = _refusal(address, wrapper_network)
    assert refusal is not None and "that is" in refusal


def test_each_non_public_form_needs_a_network_of_its_own() -> None:
    teredo = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # client 192.0.2.45 (TEST-NET-1)
    assert _refusal(teredo, "2001::/32") is not None  # the client's address is not allowed
    assert _refusal(teredo, "192.0.2.0/24") is not None  # the Teredo address is not either
    assert _refusal(teredo, "2001::/32", "192.0.2.0/24") is None
    assert _refusal("2002:7f00:1::", "2002::/16", "127.0.0.1/32") is None


def test_nat64_spells_its_ipv4_address() -> None:
    # DNS64 sites reach IPv4 through 64:ff9b::/96: a public IPv4 inside is public ...
    assert _refusal("64:ff9b::808:808") is None
    assert _refusal("::ffff:8.8.8.8") is None
    # ... and a non-public one opens with the IPv4 network, the wrapper being no host.
    assert _refusal("64:ff9b::a00:1", "10.0.0.0/8") is None
    assert _refusal("64:ff9b::a9fe:a9fe", "169.254.0.0/16") is not None  # metadata
    assert _refusal("64:ff9b::a9fe:a9fe", "169.254.169.254/32") is None
