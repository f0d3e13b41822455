"""Which webhook URLs the gateway may call (SSRF safety).

A webhook URL comes from an API user, so calling it blindly would let them make the gateway
reach its own network: the cloud metadata service, Redis, the database, admin ports. A URL is
accepted only if it is plain http(s) and every address its host resolves to is public, or
inside a network the operator explicitly allowed.

The caller must connect to the addresses ``resolve`` returned (not resolve the name again),
or a DNS answer that changes between the check and the call gets past the check.

The operator's allow-list is parsed with the settings (app/core/settings.py).
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

from app.core.settings import Network

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Letters, digits, hyphen, dot; underscore too, since some real DNS names carry one.
_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + "-._")
_DECIMAL = frozenset(string.digits)
_HEX = frozenset(string.hexdigits)


def _networks(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Never public, whatever the running Python's ``is_global`` says (its tables changed across
# 3.11 patch releases); listing them keeps the rule the same everywhere and readable here.
_NOT_PUBLIC = _networks(
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT: the provider's internal network
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, home of 169.254.169.254 (cloud metadata)
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking, used for internal networks in practice
    "::/128",
    "::1/128",
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local, still routed internally in places
)

# IPv6 ranges whose addresses carry an IPv4 address that a translator or tunnel may deliver
# to, so 64:ff9b::a9fe:a9fe can mean 169.254.169.254. Refused unless explicitly allowed.
_EMBEDS_IPV4 = _networks(
    "::/96",  # IPv4-compatible (deprecated)
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b::/96",  # NAT64, well-known prefix
    "64:ff9b:1::/48",  # NAT64, local-use prefix
    "2001::/32",  # Teredo
    "2002::/16",  # 6to4
)


class UnsafeTarget(ValueError):
    """A webhook URL that must not be called; str(error) is one human sentence for the API user."""


@dataclass(frozen=True)
class WebhookTarget:
    """A syntactically acceptable webhook URL, split into what the HTTP client needs."""

    url: str  # the URL as given
    scheme: str  # "http" or "https"
    host: str  # hostname as it appears (lowercased, IPv6 without brackets)
    port: int  # explicit or default (80/443)
    target: str  # path + query to send in the request line, "/" if empty


def _inside(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def _is_public(address: Address) -> bool:
    if _inside(address, _NOT_PUBLIC) or _inside(address, _EMBEDS_IPV4):
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def address_allowed(address: Address, allowed: Sequence[Network]) -> bool:
    """True if the address is inside one of ``allowed``, or is globally routable.

    IPv4-mapped IPv6 (::ffff:a.b.c.d) is never public on its own: the socket layer connects
    to the mapped IPv4 address, so it is allowed only when that address (or the IPv6 form
    itself) is inside ``allowed``. Other IPv4-embedding ranges (NAT64, 6to4, Teredo) need the
    IPv6 address itself inside ``allowed``.
    """
    if _inside(address, allowed):
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _inside(address.ipv4_mapped, allowed)
    return _is_public(address)


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """Split "host:port" / "[v6]:port" into a checked, lowercased host and the port text."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise UnsafeTarget("webhook_url has an unterminated IPv6 address ('[' without ']')")
        host, rest = netloc[1:end].lower(), netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UnsafeTarget("webhook_url has unexpected text after its IPv6 address")
        # A zone (fe80::1%eth0) picks a local interface: never meaningful for a webhook.
        if "%" in host:
            raise UnsafeTarget("webhook_url must not use an IPv6 zone identifier")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeTarget(f"webhook_url host [{host}] is not a valid IPv6 address") from None
        return host, rest[1:] if rest else None
    host, colon, port = netloc.partition(":")
    host = host.lower()
    if not host:
        raise UnsafeTarget("webhook_url has no host")
    if not set(host) <= _HOST_CHARS:
        raise UnsafeTarget(f"webhook_url host {host!r} contains characters not allowed in a host")
    return host, port if colon else None


def _parse_port(text: str | None, scheme: str) -> int:
    # An empty port ("host:/") means the default, per RFC 3986.
    if not text:
        return _DEFAULT_PORTS[scheme]
    if not set(text) <= _DECIMAL:
        raise UnsafeTarget(f"webhook_url port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise UnsafeTarget(f"webhook_url port {port} is outside 1-65535")
    return port


def parse_target(url: str) -> WebhookTarget:
    """Check a webhook URL's syntax (no DNS) and split it; the fragment is dropped."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    # Parsers disagree about whitespace and control characters (urlsplit silently strips
    # some), and they enable header injection in the request line.
    if any(char.isspace() or not char.isprintable() for char in url):
        raise UnsafeTarget("webhook_url must not contain whitespace or control characters")
    # Non-ASCII hosts go through IDNA normalisation on resolution, which turns lookalikes
    # such as fullwidth digits into IP addresses; non-ASCII paths are not valid HTTP.
    if not url.isascii():
        raise UnsafeTarget(
            "webhook_url must be ASCII; use punycode for the host and percent-encode the path"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeTarget("webhook_url is not a valid URL") from None
    if parts.scheme not in _DEFAULT_PORTS:
        if not parts.scheme:
            raise UnsafeTarget("webhook_url must be an absolute http or https URL")
        raise UnsafeTarget(f"webhook_url must use http or https, not {parts.scheme}")
    if "@" in parts.netloc:
        raise UnsafeTarget("webhook_url must not contain a user name or password")
    host, port_text = _split_netloc(parts.netloc)
    port = _parse_port(port_text, parts.scheme)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(url=url, scheme=parts.scheme, host=host, port=port, target=target)


def _numeric_label(label: str) -> bool:
    """A label inet_aton reads as a number: decimal, octal (leading 0) or hex (0x...)."""
    if label[:2] in ("0x", "0X"):
        return set(label[2:]) <= _HEX
    return label != "" and set(label) <= _DECIMAL


def _looks_numeric(host: str) -> bool:
    """True for hosts the C resolver may read as an IPv4 address in a non-standard form.

    glibc maps 0x7f.1, 127.1, 2130706433 and 0177.0.0.1 to 127.0.0.1; other platforms differ.
    Called only on hosts that are not canonical literals. No real hostname is all-numeric (no
    top-level domain is), so these are refused outright rather than left to the platform.
    """
    return all(_numeric_label(label) for label in host.removesuffix(".").split("."))


def _getaddrinfo(host: str, port: int) -> list[Address]:
    addresses: list[Address] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(sockaddr[0], str):
            continue
        addresses.append(ipaddress.ip_address(sockaddr[0]))
    return addresses


def resolve(
    target: WebhookTarget,
    *,
    allowed: Sequence[Network],
    resolver: Callable[[str, int], list[Address]] | None = None,
) -> list[Address]:
    """Return the host's addresses (de-duplicated, in order) if every one of them is allowed.

    All addresses must pass, not just the first: the HTTP client may try any of them, and an
    attacker controls the order of their own DNS answers.
    """
    host = target.host
    # Canonical literals need no resolver, so a custom resolver cannot change their meaning.
    try:
        found: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        if _looks_numeric(host):
            raise UnsafeTarget(
                f"webhook_url host {host} looks like an IP address in a non-standard form;"
                " use a dotted-quad address such as 192.0.2.1 or a hostname"
            ) from None
        try:
            found = (resolver or _getaddrinfo)(host, target.port)
        except (OSError, UnicodeError):  # gaierror, or IDNA refusing a too-long label
            found = []
    addresses = list(dict.fromkeys(found))
    if not addresses:
        raise UnsafeTarget(f"webhook_url host {host} does not resolve")
    for address in addresses:
        if not address_allowed(address, allowed):
            raise UnsafeTarget(
                f"webhook_url resolves to {address}, which is not a public address; the "
                "gateway's operator can allow its network with FLUXGATE_WEBHOOK_ALLOWED_NETWORKS"
            )
    return addresses


def check_url(
    url: str,
    *,
    allowed: Sequence[Network],
    resolver: Callable[[str, int], list[Address]] | None = None,
) -> tuple[WebhookTarget, list[Address]]:
    """Parse and resolve a webhook URL; raise UnsafeTarget if it must not be called."""
    target = parse_target(url)
    return target, resolve(target, allowed=allowed, resolver=resolver)


def check_webhook_url(
    url: str,
    *,
    allowed: Sequence[Network],
    resolver: Callable[[str, int], list[Address]] | None = None,
) -> tuple[WebhookTarget, list[Address]]:
    """:func:`check_url`, plus the contract's scheme rule: https, or plain http only to
    receivers inside the allowed networks (the payload must not cross the internet in clear)."""
    target, addresses = check_url(url, allowed=allowed, resolver=resolver)
    if target.scheme == "http" and not all(_inside(address, allowed) for address in addresses):
        raise UnsafeTarget(
            "webhook_url must use https; plain http is only for receivers inside "
            "FLUXGATE_WEBHOOK_ALLOWED_NETWORKS"
        )
    return target, addresses
