"""Outbound HTTP that cannot be pointed at our own network.

Every connection, including each one a redirect opens, resolves the host and refuses
loopback, private, link-local, multicast, reserved and cloud-metadata addresses (also when an
IPv6 address embeds one: NAT64, 6to4, Teredo, IPv4-compatible or -mapped) unless the
operator allowlisted the host or a CIDR (SIGNALBOX_OUTBOUND_ALLOW). The check happens in the
connection itself, on the address actually dialled, so DNS rebinding between a check and the
connect gains nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx


class OutboundRefused(Exception):
    """The destination is not a public address and is not allowlisted."""


class Allowlist:
    def __init__(self, entries: Iterable[str]):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self.networks)


# IPv6 ranges that carry an IPv4 address inside: a connection to one of them reaches (through
# a translator or tunnel) the IPv4 it embeds, so they are judged as that IPv4. Python's
# `is_global` calls most of them public whatever they embed.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated (also :: and ::1)
# RFC 6052 places the IPv4 right after the translator's prefix, whose length we cannot know
# inside the local-use /48: every layout it allows there must embed a public IPv4.
LOCAL_USE_PREFIX_LENGTHS = (48, 56, 64, 96)


def _rfc6052_ipv4(address: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    packed = address.packed
    if prefix_length == 96:
        return ipaddress.IPv4Address(packed[12:])
    # Byte 8 (bits 64-71, the "u" octet) is reserved and skipped: the IPv4 may straddle it.
    without_u = packed[:8] + packed[9:]
    start = prefix_length // 8
    return ipaddress.IPv4Address(without_u[start : start + 4])


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (several when the layout is
    ambiguous, two for Teredo: server and client); empty for a plain IPv6 address."""
    if address.ipv4_mapped:
        return [address.ipv4_mapped]
    if address.sixtofour:  # 2002::/16
        return [address.sixtofour]
    if address.teredo:  # 2001::/32
        return list(address.teredo)
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(address.packed[12:])]
    if address in NAT64_LOCAL_USE:
        return [_rfc6052_ipv4(address, length) for length in LOCAL_USE_PREFIX_LENGTHS]
    return []


def _is_public_ipv4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not address.is_multicast


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:
            return all(_is_public_ipv4(ipv4) for ipv4 in embedded)
    return address.is_global and not address.is_multicast


def resolve_allowed(host: str, port: int, allow: Allowlist) -> list[str]:
    """Addresses of `host` we may dial, or OutboundRefused naming the first refused one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if allow.allows_host(host):
        return addresses
    allowed = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if is_public(address) or allow.allows_address(address):
            allowed.append(text)
        else:
            raise OutboundRefused(
                f"refusing to connect to {host} ({address}): not a public address; an operator "
                f"can allow it with SIGNALBOX_OUTBOUND_ALLOW"
            )
    return allowed


class _GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allow: Allowlist):
        self.allow = allow

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last_error: Exception | None = None
        for address in resolve_allowed(host, port, self.allow):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"no address to connect to for {host!r}")

    def connect_unix_socket(self, *args, **kwargs):
        raise OutboundRefused("unix sockets are not reachable from steps")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~15 ms of CPU (over 100 ms on a loaded machine): once per
    # process, not once per request. A client context is safe to share between threads.
    return httpx.create_ssl_context()


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allow: Allowlist, **kwargs):
        kwargs.setdefault("verify", _ssl_context())
        super().__init__(**kwargs)
        self._pool = httpcore.ConnectionPool(
            ssl_context=self._pool._ssl_context,
            network_backend=_GuardedBackend(allow),
        )


def guarded_client(allow_entries: Iterable[str], *, timeout: float) -> httpx.Client:
    # trust_env=False: a proxy from the environment would bypass the address check.
    return httpx.Client(
        transport=GuardedTransport(Allowlist(allow_entries)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
