"""The egress rules: every address and URL form the issue lists, pure (no
mocks, no DNS except `localhost`), then the transport connecting to the
checked address."""

from __future__ import annotations

import http.server
import threading

import httpx
import pytest

from orchestrator.guard.decision import decide
from orchestrator.guard.egress import (
    EgressDenied,
    check_url,
    host_rule,
    resolve_checked,
)
from orchestrator.guard.egress_connect import egress_transport
from orchestrator.guard.policy import Network, combine, parse_policy

OPEN = Network(enabled=True)


def denied(url: str, net: Network = OPEN, secrets: tuple[str, ...] = ()) -> str:
    with pytest.raises(EgressDenied) as info:
        check_url(url, net, secrets=secrets)
    return info.value.rule_id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.2:8080/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://127.0.0.1./",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:a00:1::]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[64:ff9b:1::8.8.8.8]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.1.1/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://198.18.0.1/",
        "http://192.0.2.1/",
        "http://[2001:db8::1]/",
    ],
)
def test_private_loopback_reserved_and_encoded_addresses_are_refused(url: str) -> None:
    assert denied(url) == "egress-private-address"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",  # 169.254.169.254 as one decimal number
    ],
)
def test_metadata_services_are_refused_by_name_and_address(url: str) -> None:
    assert denied(url) == "egress-metadata"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "data:text/html,<b>x</b>",
        "gopher://example.com/",
        "ftp://example.com/f",
        "javascript:alert(1)",
        "ws://example.com/",
        "example.com/x",
    ],
)
def test_schemes_other_than_http_are_refused(url: str) -> None:
    assert denied(url) == "egress-scheme"


def test_userinfo_is_refused_and_not_echoed() -> None:
    with pytest.raises(EgressDenied) as info:
        check_url("https://bob:hunter22@example.com/", OPEN, secrets=())
    assert info.value.rule_id == "egress-userinfo"
    assert "hunter22" not in str(info.value)


def test_a_known_secret_in_the_url_is_refused_in_any_encoding() -> None:
    secret = "s3cr3t-value/+="
    assert denied(f"https://example.com/?q={secret}", secrets=(secret,)) == "egress-secret-in-url"
    assert (
        denied("https://example.com/?q=s3cr3t-value%2F%2B%3D", secrets=(secret,))
        == "egress-secret-in-url"
    )
    with pytest.raises(EgressDenied) as info:
        check_url(f"https://example.com/{secret}", OPEN, secrets=(secret,))
    assert secret not in str(info.value)


def test_public_addresses_and_names_pass() -> None:
    for url in (
        "https://example.com/a?b=c",
        "http://8.8.8.8/",
        "https://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",
        "HTTPS://Example.COM",
    ):
        assert check_url(url, OPEN, secrets=()).hostname


def test_network_off_refuses_everything() -> None:
    assert denied("https://example.com/", Network()) == "egress-network-off"


def test_host_lists_with_patterns_ports_and_deny_winning() -> None:
    net = Network(
        enabled=True,
        allow_hosts=("*.example.com", "api.test:8443"),
        deny_hosts=("evil.example.com",),
    )
    assert check_url("https://docs.example.com/", net, secrets=())
    assert check_url("https://a.b.example.com/", net, secrets=())
    assert check_url("https://api.test:8443/", net, secrets=())
    assert denied("https://example.com/", net) == "egress-host-not-allowed"
    assert denied("https://api.test/", net) == "egress-host-not-allowed"
    assert denied("https://evil.example.com/", net) == "egress-host-denied"
    assert denied("https://docs.example.com.evil.org/", net) == "egress-host-not-allowed"


def test_allow_private_opens_exactly_what_it_names() -> None:
    net = Network(enabled=True, allow_private=("127.0.0.1", "10.1.0.0/16"))
    for url in (
        "http://127.0.0.1:9/",
        "http://2130706433/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.2.3/",
    ):
        assert check_url(url, net, secrets=())
    assert denied("http://127.0.0.2/", net) == "egress-private-address"
    assert denied("http://10.2.0.1/", net) == "egress-private-address"
    assert denied("http://169.254.169.254/", net) == "egress-metadata"
    deny_wins = Network(enabled=True, allow_private=("127.0.0.1",), deny_hosts=("127.0.0.0/8",))
    assert denied("http://127.0.0.1/", deny_wins) == "egress-host-denied"


def test_the_message_names_the_rule_and_the_setting_that_would_allow_it() -> None:
    with pytest.raises(EgressDenied) as info:
        check_url("http://0x7f000001:8080/", OPEN, secrets=())
    text = str(info.value)
    assert "egress-private-address" in text and "127.0.0.1 is a loopback address" in text
    assert "network.allow_private: ['127.0.0.1']" in text


@pytest.mark.parametrize(
    "entry", ["*.*.com", "exa*mple.com", "host:port", "[::1]x", "", "host:70000"]
)
def test_bad_host_entries_fail_when_the_policy_loads(entry: str) -> None:
    with pytest.raises(ValueError):
        host_rule(entry)


def test_resolved_addresses_are_checked_for_names() -> None:
    with pytest.raises(EgressDenied) as info:
        resolve_checked("localhost", 80, OPEN)
    assert info.value.rule_id == "egress-private-address"
    assert "localhost resolves to it" in str(info.value)
    by_name = Network(enabled=True, allow_private=("localhost",))
    assert all(ip.is_loopback for ip in resolve_checked("localhost", 80, by_name))
    assert resolve_checked(
        "0x7f000001", 80, Network(enabled=True, allow_private=("127.0.0.0/8",))
    ) == [__import__("ipaddress").ip_address("127.0.0.1")]


def test_policy_decisions_name_egress_rules() -> None:
    pol = parse_policy(
        {"tier": "read-only", "network": {"enabled": True, "allow_hosts": ["example.com"]}}
    )
    assert decide("fetch", {"url": "https://example.com/"}, pol).decision == "allow"
    v = decide("fetch", {"url": "http://169.254.169.254/"}, pol)
    assert (v.decision, v.rule_id) == ("deny", "egress-host-not-allowed")
    assert decide("web_search", {"query": "x"}, parse_policy({})).rule_id == "egress-network-off"
    assert (
        decide(
            "browser", {"url": "file:///etc/passwd"}, parse_policy({"network": {"enabled": True}})
        ).rule_id
        == "egress-scheme"
    )


def test_combining_policies_never_widens_the_network() -> None:
    a = parse_policy(
        {
            "network": {
                "enabled": True,
                "allow_private": ["127.0.0.1", "10.0.0.0/8"],
                "deny_hosts": ["a.test"],
            }
        }
    ).doc
    b = parse_policy(
        {"network": {"enabled": True, "allow_private": ["127.0.0.1"], "deny_hosts": ["b.test"]}}
    ).doc
    c = combine(a, b).network
    assert c.allow_private == ("127.0.0.1",)
    assert c.deny_hosts == ("a.test", "b.test")
    assert combine(a, parse_policy({"network": {"enabled": True}}).doc).network.allow_private == ()
    assert not c.for_shell


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.headers.get("Host", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_transport_connects_only_to_checked_addresses_keeping_the_host() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        allowed = Network(enabled=True, allow_private=("localhost",))
        with httpx.Client(transport=egress_transport(allowed), trust_env=False) as client:
            r = client.get(f"http://localhost:{port}/")
            assert r.text == f"localhost:{port}"
        # the same name without the allowance: refused at connect time
        with httpx.Client(transport=egress_transport(OPEN), trust_env=False) as client:
            with pytest.raises(EgressDenied):
                client.get(f"http://localhost:{port}/")
    finally:
        server.shutdown()
