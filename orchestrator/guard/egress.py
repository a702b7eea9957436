"""Egress policy: which URLs, hosts and addresses a network tool may reach.

Every request of `web_fetch`, `web_search` and `browser` goes through two
checks, in this order, and the second one again for every redirect hop:

- `check_url(url, net)` looks at the URL only (no DNS, no clock): the
  session's network must be on, the scheme http or https, no userinfo, no
  known secret anywhere in it, and the host allowed by the host lists. A host
  written as an IP address in any form a resolver or browser accepts
  (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`,
  6to4 and NAT64 forms) is decoded first and judged as that address.
- `resolve_checked(host, port, net)` resolves the host once and checks every
  address it returned; one forbidden address refuses them all (an attacker's
  DNS answer mixing a public and a private address gains nothing).

Neither check is worth anything if the connection then resolves the name
again (DNS rebinding: public at check time, 127.0.0.1 at connect time), so
`orchestrator.guard.egress_connect.EgressBackend` is an httpcore network
backend whose `connect_tcp` calls `resolve_checked` and connects to exactly
the checked addresses. httpcore still passes the URL's host as TLS
`server_hostname` (SNI and certificate verification) and httpx sends it as
`Host`, so nothing else changes. `egress_transport(net)` there is an httpx
transport built on it. (This module imports neither, so the policy that
uses these checks stays light.)

Private, loopback, link-local, CGNAT, multicast, reserved, unspecified and
cloud metadata addresses are denied unless `network.allow_private` names
them (a CIDR, an address, or a host pattern whose addresses it allows);
`network.deny_hosts` wins over every allowance. docs/network.md has
examples and how to allow what a rule refuses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

import idna

from orchestrator.config.secrets import known_values  # what the secrets helper read
from orchestrator.errors import ToolError
from orchestrator.guard.masking import mask

__all__ = [
    "EgressDenied",
    "check_url",
    "resolve_checked",
    "check_address",
    "parse_host",
    "RULES",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud metadata services: named apart from "private" because reaching one
# hands out the machine's credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.253",
        "fd00:ec2::254",
        "100.100.100.200",
        "fd20:ce::254",
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
        "metadata.tencentyun.com",
    }
)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_V4_COMPAT = ipaddress.ip_network("::/96")

# Rule ids as they appear in PermissionDecided and in EgressDenied.
RULES = {
    "egress-network-off": "the session's network is off",
    "egress-bad-url": "the URL does not parse as an absolute http(s) URL",
    "egress-scheme": "only http and https are fetched",
    "egress-userinfo": "credentials in a URL leave the machine in clear text",
    "egress-secret-in-url": "a known secret would leave the machine in the URL",
    "egress-host-denied": "network.deny_hosts names the host",
    "egress-host-not-allowed": "network.allow_hosts does not name the host",
    "egress-metadata": "cloud metadata services hand out the machine's credentials",
    "egress-private-address": "private, loopback, link-local and reserved addresses are "
    "inside the operator's network",
    "egress-unresolvable": "the host has no address",
}


class NetworkRules(Protocol):
    """What egress reads of `orchestrator.guard.policy.Network`."""

    enabled: bool
    allow_hosts: tuple[str, ...]
    deny_hosts: tuple[str, ...]
    allow_private: tuple[str, ...]


class EgressDenied(ToolError):
    """A network request the egress policy refuses; nothing was sent.

    `rule_id` is one of `RULES`; the message says what was refused, why, and
    which policy setting would allow it."""

    exit_code = 3

    def __init__(self, target: str, rule_id: str, why: str, fix: str) -> None:
        super().__init__(f"request to {target} refused by egress rule {rule_id}: {why}. {fix}")
        self.target, self.rule_id, self.why, self.fix = target, rule_id, why, fix

    @property
    def reason(self) -> str:
        """The message without the target (for a policy Match, which names the call)."""
        return f"{self.why}. {self.fix}"


# -- host names and IP literals --------------------------------------------------------


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None | bool:
    """The address a resolver (inet_aton) or a browser (WHATWG URL) reads in
    `host`: 1 to 4 dot-separated numbers, each decimal, 0x-hex or 0-octal, the
    last filling the remaining bytes (`127.1`, `2130706433`, `0x7f.0.0.1`).
    None: not an IPv4 form (a name); False: looks like one but is invalid."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    numbers: list[int | None] = []
    for part in parts:
        text, base = part.lower(), 10
        if text.startswith("0x"):
            text, base = text[2:], 16
        elif len(text) > 1 and text.startswith("0"):
            text, base = text[1:], 8
        try:
            numbers.append(int(text, base) if text else (0 if base == 16 else None))
        except ValueError:
            numbers.append(None)
    if numbers[-1] is None:
        return None  # a name (its last label is not a number)
    if None in numbers or len(numbers) > 4:
        return False
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return False
    value = 0
    for n in head:
        value = value * 256 + n
    return ipaddress.IPv4Address(value * 256 ** (5 - len(values)) + last)


def parse_host(host: str) -> tuple[str, IPAddress | None]:
    """`host` (as urlsplit's `hostname` gives it, or a bare name) normalized
    for matching: lower case, IDNA-encoded, one trailing dot dropped; and the
    IP address it denotes, in any accepted form, or None for a name.
    Raises EgressDenied for a host that no request should carry."""
    raw = host.strip("[]")
    if not raw or any(c in raw for c in "%\\/@ \t\r\n\x00") and not _scoped_v6(raw):
        raise EgressDenied(
            host or "(no host)",
            "egress-bad-url",
            f"host {host!r} is empty or holds characters no host name has",
            "Write the URL with a plain host name or address",
        )
    if ":" in raw:
        try:
            return raw.lower(), ipaddress.IPv6Address(raw)
        except ValueError:
            raise EgressDenied(
                host,
                "egress-bad-url",
                f"host {host!r} is not an IPv6 address",
                "Write the URL with a plain host name or address",
            ) from None
    name = raw.lower()
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    if not name.isascii():
        try:
            # idna: httpx's own IDNA 2008 encoder, so this matches what it will send.
            name = idna.encode(name, uts46=True).decode("ascii")
        except Exception:  # noqa: BLE001 - every idna failure means the same thing
            raise EgressDenied(
                host,
                "egress-bad-url",
                f"host {host!r} is not a valid internationalized name",
                "Check the URL",
            ) from None
    v4 = _legacy_ipv4(name)
    if v4 is False:
        raise EgressDenied(
            host,
            "egress-bad-url",
            f"host {host!r} looks like an IPv4 address but is not a valid one",
            "Check the URL",
        )
    return name, v4 if isinstance(v4, ipaddress.IPv4Address) else None


def _scoped_v6(raw: str) -> bool:
    return ":" in raw and "%" in raw and " " not in raw


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped (`::ffff:a.b.c.d`),
    IPv4-compatible (`::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`), NAT64
    (`64:ff9b::a.b.c.d`) and the Teredo client."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _V4_COMPAT and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def address_problem(ip: IPAddress) -> tuple[str, str] | None:
    """(rule id, why) when `ip` is not a public unicast address, else None.
    An IPv6 address carrying an IPv4 one is judged by the IPv4 address (the
    one the packets reach); Teredo and local-use NAT64 are refused as such."""
    v4 = embedded_ipv4(ip)
    shown = f"{ip} (which carries {v4})" if v4 is not None else str(ip)
    for candidate in (v4, ip):
        if candidate is not None and candidate in METADATA_ADDRESSES:
            return "egress-metadata", f"{shown} is a cloud metadata service address"
    if v4 is not None:
        kind = _kind(v4)
        if kind is not None:
            return "egress-private-address", f"{shown} is {_a(kind)} address"
        if ip in _NAT64_LOCAL:
            return "egress-private-address", f"{shown} is a local-use NAT64 address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
            return "egress-private-address", f"{shown} is a Teredo tunnel address"
        return None
    kind = _kind(ip)
    return None if kind is None else ("egress-private-address", f"{shown} is {_a(kind)} address")


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (shared)"
    if isinstance(ip, ipaddress.IPv4Address) and int(ip) >> 24 == 0:
        return '"this network" (0.0.0.0/8)'
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


# -- host rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRule:
    """One entry of allow_hosts, deny_hosts or allow_private: `example.com`,
    `*.example.com` (subdomains, not the name itself), `*` (any host), an
    address or CIDR (`10.0.0.0/8`, `::1`), each with an optional `:port`
    (`[::1]:8080` for IPv6)."""

    text: str
    name: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, name: str, ip: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            if ip is None:
                return False
            v4 = embedded_ipv4(ip)
            return ip in self.network or (v4 is not None and v4 in self.network)
        assert self.name is not None
        if self.name == "*":
            return True
        if self.name.startswith("*."):
            return name.endswith(self.name[1:])
        return name == self.name


@lru_cache(maxsize=4096)
def host_rule(text: str) -> HostRule:
    """Parse one host list entry; raises ValueError naming what is wrong."""
    entry, port = text.strip().lower(), None
    if entry.startswith("["):
        addr, _, rest = entry[1:].partition("]")
        entry = addr
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"host entry {text!r}: expected [ADDRESS]:PORT")
            port = int(rest[1:])
    elif entry.count(":") == 1:
        entry, _, tail = entry.partition(":")
        if not tail.isdigit():
            raise ValueError(f"host entry {text!r}: the port must be a number")
        port = int(tail)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"host entry {text!r}: port {port} is out of range")
    if not entry:
        raise ValueError(f"host entry {text!r} names no host")
    try:
        return HostRule(text, network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    if entry != "*" and ("*" in entry[2:] or "*" in entry and not entry.startswith("*.")):
        raise ValueError(
            f"host entry {text!r}: a wildcard may only start the name (`*.example.com`)"
        )
    try:
        name, ip = parse_host(entry[2:] if entry.startswith("*.") else entry)
    except EgressDenied as exc:
        raise ValueError(f"host entry {text!r}: {exc.why}") from None
    if ip is not None:
        return HostRule(text, network=ipaddress.ip_network(ip), port=port)
    return HostRule(text, name=("*." + name) if entry.startswith("*.") else name, port=port)


def _matching(entries: Iterable[str], name: str, ip: IPAddress | None, port: int) -> str | None:
    for entry in entries:
        if host_rule(entry).matches(name, ip, port):
            return entry
    return None


def _shown(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def _check_host(name: str, ip: IPAddress | None, port: int, net: NetworkRules, target: str) -> None:
    """The host lists and, for an address or a metadata name, the private ban."""
    if not net.enabled:
        raise EgressDenied(
            target,
            "egress-network-off",
            RULES["egress-network-off"],
            "Enable it with `network: {enabled: true}` in the policy",
        )
    denied = _matching(net.deny_hosts, name, ip, port)
    if denied is not None:
        raise EgressDenied(
            target,
            "egress-host-denied",
            f"network.deny_hosts entry {denied!r} matches {_shown(name, port)}",
            "Deny wins over every allowance; remove the entry to allow it",
        )
    if net.allow_hosts and _matching(net.allow_hosts, name, ip, port) is None:
        raise EgressDenied(
            target,
            "egress-host-not-allowed",
            (f"{_shown(name, port)} is not in network.allow_hosts ({', '.join(net.allow_hosts)})"),
            f"Add {name!r}"
            + (
                f" (or a pattern such as '*.{name.split('.', 1)[1]}')"
                if ip is None and "." in name
                else ""
            )
            + " to network.allow_hosts",
        )
    if (
        ip is None
        and name in METADATA_HOSTS
        and _matching(net.allow_private, name, None, port) is None
    ):
        raise EgressDenied(
            target,
            "egress-metadata",
            f"{name} is a cloud metadata service name",
            f"Allow it explicitly with network.allow_private: [{name!r}]",
        )
    if ip is not None:
        check_address(ip, port, net, name=name, target=target)


def check_address(
    ip: IPAddress,
    port: int,
    net: NetworkRules,
    *,
    name: str = "",
    target: str = "",
    resolved: bool = False,
) -> None:
    """Refuse a non-public address unless network.allow_private names it (by
    address or CIDR, or by the host name it was resolved from)."""
    problem = address_problem(ip)
    if problem is None:
        return
    if _matching(net.allow_private, name or str(ip), ip, port) is not None:
        return
    rule_id, why = problem
    via = ""
    if resolved:
        via = f" ({name} resolves to it)"
    elif name and name != str(ip).lower():
        via = f" (written {name!r})"
    allow = embedded_ipv4(ip) or ip
    raise EgressDenied(
        target or _shown(str(ip), port),
        rule_id,
        why + via,
        (
            f"Allow it explicitly with network.allow_private: ['{allow}'] (or a CIDR that "
            "contains it) in the policy, if the session should reach it"
        ),
    )


# -- URLs -------------------------------------------------------------------------------


def _known_secrets() -> tuple[str, ...]:
    try:
        return tuple(known_values())
    except Exception:  # noqa: BLE001 - no secrets known is the only fallback there is
        return ()


def _show_url(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."


def check_url(url: str, net: NetworkRules, *, secrets: Sequence[str] | None = None) -> SplitResult:
    """The URL split, when a network tool may request it under `net`;
    otherwise EgressDenied naming the rule. Looks at the URL only: the
    connection checks the addresses it resolves to (`resolve_checked`).
    `secrets`: values that must not leave the machine (default: every value
    `orchestrator.config.secrets` knows); pass () for a pure check."""
    shown = _show_url(url)
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise EgressDenied(
            repr(shown),
            "egress-bad-url",
            "the URL holds whitespace or control characters",
            "Percent-encode them",
        )
    if not net.enabled:
        raise EgressDenied(
            shown,
            "egress-network-off",
            RULES["egress-network-off"],
            "Enable it with `network: {enabled: true}` in the policy",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressDenied(
            shown, "egress-bad-url", f"the URL does not parse ({exc})", "Check the URL"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise EgressDenied(
            shown,
            "egress-scheme",
            (f"scheme {parts.scheme or '(none)'}: is not fetched; only http and https are"),
            "Use an http:// or https:// URL (file, data, ftp, gopher and the rest are "
            "refused in every policy)",
        )
    if "@" in parts.netloc or parts.username is not None:
        raise EgressDenied(
            shown.replace(parts.netloc, parts.netloc.rpartition("@")[2]),
            "egress-userinfo",
            RULES["egress-userinfo"] + " (user:password@ in the URL)",
            "Remove the credentials from the URL; a search provider's key "
            "goes in the settings as a secret",
        )
    if not parts.hostname:
        raise EgressDenied(
            shown,
            "egress-bad-url",
            "the URL names no host",
            "Write an absolute URL such as https://example.com/page",
        )
    known = _known_secrets() if secrets is None else secrets
    if known and mask(url, known, patterns=False) != url:
        raise EgressDenied(
            mask(shown, known, patterns=False),
            "egress-secret-in-url",
            RULES["egress-secret-in-url"],
            "Send the secret in a header from the settings instead, or remove it from the request",
        )
    name, ip = parse_host(parts.hostname)
    _check_host(name, ip, port or DEFAULT_PORTS[scheme], net, shown)
    return parts


def url_port(parts: SplitResult) -> int:
    return parts.port or DEFAULT_PORTS[parts.scheme.lower()]


def resolve_checked(host: str, port: int, net: NetworkRules) -> list[IPAddress]:
    """Resolve `host` once and check every address; the addresses to connect
    to (in resolver order), or EgressDenied when any of them is refused."""
    name, ip = parse_host(host)
    target = _shown(name, port)
    if ip is not None:
        _check_host(name, ip, port, net, target)
        return [ip]
    _check_host(name, None, port, net, target)
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressDenied(
            target, "egress-unresolvable", f"{name} does not resolve ({exc})", "Check the host name"
        ) from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        found = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if found not in addresses:
            addresses.append(found)
    if not addresses:
        raise EgressDenied(
            target, "egress-unresolvable", f"{name} has no address", "Check the host name"
        )
    for found in addresses:
        check_address(found, port, net, name=name, target=target, resolved=True)
    return addresses
