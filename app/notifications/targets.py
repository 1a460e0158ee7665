"""Where a webhook may point: the public internet, or a host the operator names.

A custodian chooses the URL and the notifier POSTs to it from inside the service's
network, so without a check a webhook is a way to reach what only the service can:
the database, the cloud's metadata endpoint, the service itself. Every address the
host resolves to must be a global unicast one (not loopback, private, link-local,
multicast, reserved or unspecified, IPv4 and IPv6 alike, IPv4-mapped included),
unless the host is on ``CPR_WEBHOOK_ALLOWED_HOSTS``. The check is made when the
webhook is set and again at every delivery, and the delivery connects to the address
that was vetted (the name is not resolved a second time, so it cannot be made to
point elsewhere in between: DNS rebinding), keeping the name for TLS and Host.
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedTarget(ValueError):
    """The URL's host is not one the notifier may send to (the reason says why)."""


@dataclass(frozen=True)
class Target:
    url: str  # the URL with the vetted address in place of the host name
    host: str  # the name, for TLS (SNI and the certificate's check)
    host_header: str  # the name and any port, as the URL gave them


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def vet(url: str, allowed_hosts: frozenset[str]) -> Target:
    """Resolve the URL's host and return where to connect, or raise RefusedTarget."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise RefusedTarget("the URL names no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    named = f"[{host}]" if ":" in host else host
    host_header = named if parts.port is None else f"{named}:{parts.port}"
    if host in allowed_hosts:
        # The operator vouches for it (a receiver inside the network, resolved by its
        # own DNS, perhaps not yet): sent to as named.
        return Target(url, host, host_header)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise RefusedTarget("the host name does not resolve") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in found]
        if not addresses:
            raise RefusedTarget("the host name does not resolve")
    if not all(_public(a) for a in addresses):
        raise RefusedTarget(
            "the host is, or resolves to, a loopback, private, link-local, multicast or "
            "reserved address; the service's operator can allow a host meant to be there"
        )
    chosen = addresses[0]
    netloc = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    if parts.port is not None:
        netloc += f":{parts.port}"
    return Target(urlunsplit(parts._replace(netloc=netloc)), host, host_header)
