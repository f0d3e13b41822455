"""Webhook URL safety (SSRF): which URLs the gateway may call. Pure functions, no network."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest

from app.core.settings import Network, parse_networks
from app.webhooks.targets import (
    Address,
    UnsafeTarget,
    WebhookTarget,
    address_allowed,
    check_url,
    parse_target,
    resolve,
)

Resolver = Callable[[str, int], list[Address]]


def fake_resolver(table: dict[str, list[str]]) -> Resolver:
    """A resolver answering from ``table``; unknown names fail the way getaddrinfo does."""

    def resolver(host: str, port: int) -> list[Address]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(text) for text in table[host]]

    return resolver


def no_dns(host: str, port: int) -> list[Address]:
    """For IP literals: their meaning must not depend on a resolver."""
    raise AssertionError(f"resolver called for {host}")


def public_dns(host: str, port: int) -> list[Address]:
    """Says every name is public, so a refusal must come from a check made before resolving."""
    return [IPv4Address("93.184.215.14")]


# --- refused addresses -------------------------------------------------------------------


def refusal(address: str) -> str:
    """The 422's message: the address, and the setting that would let it through."""
    return (
        f"webhook_url resolves to {address}, which is not a public address; the gateway's "
        "operator can allow its network with FLUXGATE_WEBHOOK_ALLOWED_NETWORKS"
    )


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1/", "127.0.0.1"),
        ("http://127.255.255.254:8080/", "127.255.255.254"),
        ("http://[::1]/", "::1"),
        ("http://[::]/", "::"),
        ("http://0.0.0.0/", "0.0.0.0"),
        ("http://0.255.255.255/", "0.255.255.255"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://10.255.255.255/", "10.255.255.255"),
        ("http://172.16.0.1/", "172.16.0.1"),
        ("http://172.31.255.255/", "172.31.255.255"),
        ("http://192.168.0.1/", "192.168.0.1"),
        ("http://192.168.255.255/", "192.168.255.255"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://169.254.0.1/", "169.254.0.1"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://100.127.255.254/", "100.127.255.254"),
        ("http://198.18.0.1/", "198.18.0.1"),
        ("http://198.19.255.255/", "198.19.255.255"),
        ("http://192.0.0.1/", "192.0.0.1"),
        ("http://224.0.0.1/", "224.0.0.1"),  # multicast
        ("http://240.0.0.1/", "240.0.0.1"),  # reserved
        ("http://255.255.255.255/", "255.255.255.255"),
        ("http://[fc00::1]/", "fc00::1"),
        ("http://[fd12::1]/", "fd12::1"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://[fec0::1]/", "fec0::1"),  # deprecated site-local
        ("http://[ff02::1]/", "ff02::1"),  # multicast
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe"),
        ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe"),
        ("http://[::ffff:0:a9fe:a9fe]/", "::ffff:0:a9fe:a9fe"),  # IPv4-translated
        ("http://[::a9fe:a9fe]/", "::a9fe:a9fe"),  # IPv4-compatible
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe"),  # NAT64
        ("http://[64:ff9b:1::a9fe:a9fe]/", "64:ff9b:1::a9fe:a9fe"),  # NAT64, local use
        ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1"),  # 6to4
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    ],
)
def test_refuses_addresses_that_are_not_public(url: str, address: str) -> None:
    with pytest.raises(UnsafeTarget) as raised:
        check_url(url, allowed=(), resolver=no_dns)
    assert str(raised.value) == refusal(address)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.0",
        "10.1.2.3",
        "100.64.0.0",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba Cloud metadata
        "100.127.255.254",
        "100.127.255.255",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.0.0",
        "169.254.169.254",
        "169.254.255.255",
        "172.16.0.0",
        "172.31.255.255",
        "192.168.0.0",
        "192.168.255.255",
        "198.18.0.0",
        "198.19.255.255",
        "::",
        "::1",
        "fc00::",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:8.8.8.8",  # mapped is refused even for a public IPv4 address
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001::1",
    ],
)
def test_address_not_allowed(address: str) -> None:
    assert address_allowed(ip_address(address), ()) is False


ALL_SPECIAL_FLAGS = (
    "is_private",
    "is_reserved",
    "is_multicast",
    "is_unspecified",
    "is_loopback",
    "is_link_local",
)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.1",
        "10.1.2.3",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "192.0.0.1",
        "192.168.1.1",
        "198.18.0.1",
        "::",
        "::1",
        "fc00::1",
        "fe80::1",
        "fec0::1",
        "::a9fe:a9fe",
        "::ffff:a9fe:a9fe",
        "::ffff:0:a9fe:a9fe",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a9fe:a9fe",
        "2001::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ],
)
def test_refusal_does_not_rely_on_the_stdlib_tables(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ipaddress's is_global/is_private tables changed across Python patch releases; the
    # listed ranges must stay refused even if the running Python called them all public.
    for cls in (IPv4Address, IPv6Address):
        monkeypatch.setattr(cls, "is_global", property(lambda self: True))
        for flag in ALL_SPECIAL_FLAGS:
            monkeypatch.setattr(cls, flag, property(lambda self: False))
    assert ip_address("127.0.0.1").is_loopback is False  # the patch took effect
    assert address_allowed(ip_address(address), ()) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        # Just outside the refused ranges, to pin their edges.
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "2003::1",
    ],
)
def test_public_address_allowed(address: str) -> None:
    assert address_allowed(ip_address(address), ()) is True


# --- numeric host forms --------------------------------------------------------------------


NON_CANONICAL_IPV4 = [
    "0xa9fea9fe",
    "2852039166",
    "0251.0376.0251.0376",
    "169.254.43518",
    "0x7f.1",
    "127.1",
    "0x7f000001",
    "017700000001",
    "0177.0.0.1",
    "127.0.0.01",
    "127.0.0.1.",
    "0",
    "1.2.3.4.5",
]


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4)
def test_refuses_non_canonical_numeric_hosts_before_resolving(host: str) -> None:
    # The resolver would call the name public: the refusal must not depend on it.
    with pytest.raises(UnsafeTarget, match="non-standard form"):
        check_url(f"http://{host}/", allowed=(), resolver=public_dns)


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4)
def test_refuses_non_canonical_numeric_hosts_even_when_their_network_is_allowed(
    host: str,
) -> None:
    allowed = parse_networks("0.0.0.0/0, ::/0")
    with pytest.raises(UnsafeTarget, match="non-standard form"):
        check_url(f"http://{host}/", allowed=allowed)


@pytest.mark.parametrize("host", ["0xa9fea9fe", "2852039166", "0251.0376.0251.0376", "127.1"])
def test_refuses_numeric_hosts_with_the_real_resolver(host: str) -> None:
    with pytest.raises(UnsafeTarget):
        check_url(f"https://{host}/hook", allowed=())


@pytest.mark.parametrize("host", ["1.2.3.example", "0x7f.example.com", "123.com", "0xcafe.dev"])
def test_hostnames_with_numeric_labels_are_resolved(host: str) -> None:
    resolver = fake_resolver({host: ["93.184.215.14"]})
    assert check_url(f"http://{host}/", allowed=(), resolver=resolver)[1] == [
        IPv4Address("93.184.215.14")
    ]


# --- hostnames -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://localhost/", "http://LOCALHOST:8000/x"])
def test_refuses_localhost_with_the_real_resolver(url: str) -> None:
    with pytest.raises(UnsafeTarget, match="which is not a public address"):
        check_url(url, allowed=())


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["93.184.215.14", "10.0.0.5"], "10.0.0.5"),
        (["10.0.0.5", "93.184.215.14"], "10.0.0.5"),
        (["2606:4700:4700::1111", "::1"], "::1"),
        (["93.184.215.14", "::ffff:169.254.169.254"], "::ffff:a9fe:a9fe"),
        (["169.254.169.254"], "169.254.169.254"),
    ],
)
def test_refuses_a_hostname_if_any_address_is_not_public(answers: list[str], refused: str) -> None:
    resolver = fake_resolver({"hooks.example.com": answers})
    with pytest.raises(UnsafeTarget) as raised:
        check_url("https://hooks.example.com/", allowed=(), resolver=resolver)
    assert str(raised.value) == refusal(refused)


def test_accepts_a_hostname_with_public_addresses_deduplicated_in_order() -> None:
    resolver = fake_resolver(
        {"hooks.example.com": ["93.184.215.14", "2606:4700:4700::1111", "93.184.215.14"]}
    )
    target, addresses = check_url(
        "https://hooks.example.com/done?job=1", allowed=(), resolver=resolver
    )
    assert addresses == [IPv4Address("93.184.215.14"), IPv6Address("2606:4700:4700::1111")]
    assert target.host == "hooks.example.com"


def test_resolver_gets_the_host_and_port() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[Address]:
        calls.append((host, port))
        return [IPv4Address("93.184.215.14")]

    check_url("https://Hooks.Example.com:8443/x", allowed=(), resolver=resolver)
    assert calls == [("hooks.example.com", 8443)]


@pytest.mark.parametrize(
    "resolver",
    [fake_resolver({}), fake_resolver({"nowhere.example": []})],
    ids=["gaierror", "empty"],
)
def test_refuses_a_hostname_that_does_not_resolve(resolver: Resolver) -> None:
    with pytest.raises(UnsafeTarget, match=r"^webhook_url host nowhere\.example does not resolve"):
        check_url("http://nowhere.example/", allowed=(), resolver=resolver)


def test_refuses_a_host_the_real_resolver_cannot_encode() -> None:
    # A 64-character label is refused by the IDNA codec before any lookup.
    with pytest.raises(UnsafeTarget, match="does not resolve"):
        check_url(f"http://{'a' * 64}.example/", allowed=())


# --- accepted addresses and the allow-list --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://8.8.8.8/", IPv4Address("8.8.8.8")),
        ("https://1.1.1.1/hook", IPv4Address("1.1.1.1")),
        ("https://[2606:4700:4700::1111]/", IPv6Address("2606:4700:4700::1111")),
        ("https://[2606:4700:4700:0:0:0:0:1111]:8443/", IPv6Address("2606:4700:4700::1111")),
    ],
)
def test_accepts_public_ip_literals(url: str, address: Address) -> None:
    assert check_url(url, allowed=(), resolver=no_dns)[1] == [address]


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ("127.0.0.0/8", "http://127.0.0.1:8080/"),
        ("10.0.0.0/8", "http://10.1.2.3/"),
        ("::1/128", "http://[::1]/"),
        ("::1", "http://[::1]/"),
        ("169.254.169.254", "http://169.254.169.254/"),
        ("127.0.0.0/8", "http://[::ffff:127.0.0.1]/"),  # the mapped IPv4 address is allowed
        ("::ffff:0:0/96", "http://[::ffff:127.0.0.1]/"),
        ("64:ff9b::/96", "http://[64:ff9b::a00:1]/"),
        ("192.168.0.0/16, fd00::/8", "http://[fd12::1]/"),
    ],
)
def test_allowed_networks_override(allowed: str, url: str) -> None:
    networks = parse_networks(allowed)
    with pytest.raises(UnsafeTarget):
        check_url(url, allowed=(), resolver=no_dns)
    assert len(check_url(url, allowed=networks, resolver=no_dns)[1]) == 1


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ("10.0.0.0/8", "http://192.168.0.1/"),
        ("10.0.0.0/8", "http://[::ffff:192.168.0.1]/"),
        ("10.0.0.0/8", "http://[64:ff9b::a00:1]/"),  # NAT64 needs the IPv6 prefix allowed
        ("127.0.0.0/8", "http://[::1]/"),
        ("::1/128", "http://127.0.0.1/"),
        ("::/96", "http://[::ffff:127.0.0.1]/"),  # ::/96 does not contain ::ffff:0:0/96
    ],
)
def test_allowed_networks_do_not_leak(allowed: str, url: str) -> None:
    with pytest.raises(UnsafeTarget, match="not a public address"):
        check_url(url, allowed=parse_networks(allowed), resolver=no_dns)


def test_allowed_network_applies_to_resolved_hostnames() -> None:
    resolver = fake_resolver({"hooks.internal": ["10.0.0.7", "192.168.1.7"]})
    allowed = parse_networks("10.0.0.0/8")
    with pytest.raises(UnsafeTarget, match=r"192\.168\.1\.7"):
        check_url("http://hooks.internal/", allowed=allowed, resolver=resolver)
    allowed = parse_networks("10.0.0.0/8, 192.168.0.0/16")
    assert check_url("http://hooks.internal/", allowed=allowed, resolver=resolver)[1] == [
        IPv4Address("10.0.0.7"),
        IPv4Address("192.168.1.7"),
    ]


def test_resolve_takes_a_parsed_target() -> None:
    target = WebhookTarget(
        url="http://hooks.example.com/",
        scheme="http",
        host="hooks.example.com",
        port=80,
        target="/",
    )
    resolver = fake_resolver({"hooks.example.com": ["169.254.169.254"]})
    with pytest.raises(UnsafeTarget, match=r"169\.254\.169\.254"):
        resolve(target, allowed=(), resolver=resolver)
    assert resolve(target, allowed=parse_networks("169.254.0.0/16"), resolver=resolver) == [
        IPv4Address("169.254.169.254")
    ]


# --- URL syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", "must use http or https, not ftp"),
        ("file:///etc/passwd", "must use http or https, not file"),
        ("javascript:alert(1)", "must use http or https, not javascript"),
        ("gopher://example.com:70/", "must use http or https, not gopher"),
        ("ws://example.com/", "must use http or https, not ws"),
        ("//example.com/hook", "must be an absolute http or https URL"),
        ("example.com/hook", "must be an absolute http or https URL"),
        ("http://user:pass@example.com/", "must not contain a user name or password"),
        ("http://user@example.com/", "must not contain a user name or password"),
        ("http://@example.com/", "must not contain a user name or password"),
        ("http://example.com@169.254.169.254/", "must not contain a user name or password"),
        ("http://example.com\\@169.254.169.254/", "must not contain a user name or password"),
        ("http:///hook", "has no host"),
        ("http://", "has no host"),
        ("https://:443/", "has no host"),
        ("http:example.com", "has no host"),
        ("http://example.com:0/", "port 0 is outside 1-65535"),
        ("http://example.com:65536/", "port 65536 is outside 1-65535"),
        ("http://example.com:99999999/", "port 99999999 is outside 1-65535"),
        ("http://example.com:-1/", "port '-1' is not a number"),
        ("http://example.com:+80/", "port '\\+80' is not a number"),
        ("http://example.com:http/", "port 'http' is not a number"),
        ("http://[::1]:0/", "port 0 is outside 1-65535"),
        ("http://example.com/\r\nX-Injected: 1", "whitespace or control characters"),
        ("http://exa mple.com/", "whitespace or control characters"),
        (" http://example.com/", "whitespace or control characters"),
        ("http://example.com/\t", "whitespace or control characters"),
        ("http://example.com/\x00", "whitespace or control characters"),
        ("http://example.com/\x7f", "whitespace or control characters"),
        ("http://example.com/\u2028", "whitespace or control characters"),
        ("http://\u2460\u2461\u2466.0.0.1/", "must be ASCII"),  # circled digits: IDNA -> 127.0.0.1
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "must be ASCII"),
        ("http://example.com/caf\u00e9", "must be ASCII"),
        ("http://[::1/", "unterminated IPv6 address|not a valid URL"),
        ("http://[v1.fe]/", "not a valid (IPv6 address|URL)"),
        ("http://[127.0.0.1]/", "not a valid (IPv6 address|URL)"),
        ("http://[::1]x/", "unexpected text after its IPv6 address|not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone identifier|not a valid URL"),
        ("http://::1/", "has no host"),
        ("http://exa%6dple.com/", "characters not allowed in a host"),
        ("http://example.com,evil/", "characters not allowed in a host"),
    ],
)
def test_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(UnsafeTarget, match=message):
        parse_target(url)


def test_url_length_limit() -> None:
    base = "https://example.com/"
    longest = base + "a" * (2048 - len(base))
    assert parse_target(longest).target == "/" + "a" * (2048 - len(base))
    with pytest.raises(UnsafeTarget, match="longer than 2048 characters"):
        parse_target(longest + "a")


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "target"),
    [
        ("http://example.com", "http", "example.com", 80, "/"),
        ("https://example.com", "https", "example.com", 443, "/"),
        ("HTTPS://Hooks.Example.COM/Path", "https", "hooks.example.com", 443, "/Path"),
        ("http://example.com:8080/hook", "http", "example.com", 8080, "/hook"),
        ("https://example.com:1/", "https", "example.com", 1, "/"),
        ("https://example.com:65535/", "https", "example.com", 65535, "/"),
        ("http://example.com:/p", "http", "example.com", 80, "/p"),
        ("https://example.com/a/b?x=1&y=%20#frag", "https", "example.com", 443, "/a/b?x=1&y=%20"),
        ("https://example.com?job=1", "https", "example.com", 443, "/?job=1"),
        ("https://example.com/#only-fragment", "https", "example.com", 443, "/"),
        ("https://example.com.:443/", "https", "example.com.", 443, "/"),
        ("http://[2606:4700:4700::1111]/", "http", "2606:4700:4700::1111", 80, "/"),
        ("https://[2606:4700:4700::1111]:8443/x?y", "https", "2606:4700:4700::1111", 8443, "/x?y"),
        ("http://[::FFFF:8.8.8.8]/", "http", "::ffff:8.8.8.8", 80, "/"),
        ("http://8.8.8.8:8080", "http", "8.8.8.8", 8080, "/"),
    ],
)
def test_webhook_target_fields(url: str, scheme: str, host: str, port: int, target: str) -> None:
    assert parse_target(url) == WebhookTarget(
        url=url, scheme=scheme, host=host, port=port, target=target
    )


def test_check_url_returns_the_parsed_target() -> None:
    resolver = fake_resolver({"hooks.example.com": ["93.184.215.14"]})
    target, addresses = check_url(
        "https://hooks.example.com/done?job=1#x", allowed=(), resolver=resolver
    )
    assert target == WebhookTarget(
        url="https://hooks.example.com/done?job=1#x",
        scheme="https",
        host="hooks.example.com",
        port=443,
        target="/done?job=1",
    )
    assert addresses == [IPv4Address("93.184.215.14")]


def test_unsafe_target_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must use http or https"):
        parse_target("ftp://example.com/")


# --- the allow-list setting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("   ", ()),
        ("10.0.0.0/8, 127.0.0.1", (IPv4Network("10.0.0.0/8"), IPv4Network("127.0.0.1/32"))),
        (" ::1 ,fc00::/7 ", (IPv6Network("::1/128"), IPv6Network("fc00::/7"))),
        ("192.168.0.0/255.255.0.0", (IPv4Network("192.168.0.0/16"),)),
        ("10.0.0.0/8,", (IPv4Network("10.0.0.0/8"),)),
    ],
)
def test_parse_networks(value: str, expected: Sequence[Network]) -> None:
    assert parse_networks(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "'nonsense' is not an IP address or CIDR network"),
        ("10.0.0.0/8, nonsense", "'nonsense' is not an IP address or CIDR network"),
        (
            "10.0.0.1/8",
            "'10.0.0.1/8' has host bits set; write the network address, e.g. 10.0.0.0/8",
        ),
        ("fd12::1/8", "has host bits set"),
        ("10.0.0.0/33", "is not an IP address or CIDR network"),
        ("010.0.0.0/8", "is not an IP address or CIDR network"),
        ("10.0.0.0 /8", "is not an IP address or CIDR network"),
        ("10.0.0.0/8;127.0.0.1", "is not an IP address or CIDR network"),
    ],
)
def test_parse_networks_refuses_bad_entries(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_networks(value)
