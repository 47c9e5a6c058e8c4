"""Outbound HTTP that cannot be pointed at our own network.

Every connection, including each one a redirect opens, resolves the host and refuses
loopback, private, link-local, multicast, reserved and cloud-metadata addresses unless the
operator allowlisted the host or a CIDR (SIGNALBOX_OUTBOUND_ALLOW). The check happens in the
connection itself, on the address actually dialled, so DNS rebinding between a check and the
connect gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
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


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
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


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allow: Allowlist, **kwargs):
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
