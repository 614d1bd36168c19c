"""Fetching caller-supplied image URLs without becoming an SSRF proxy.

Off unless `image_urls_enabled`. When on, a URL must be `http(s)://host[:port]/…` without
credentials; the host is resolved *before* any connection and every resolved address must be a
public unicast one (no loopback, private, link-local — e.g. 169.254.169.254 cloud metadata —,
multicast, reserved, unspecified, CGNAT, site-local, nor IPv4 embedded in IPv6 that is any of
those). The connection then goes to the checked address (pinned: a second DNS answer cannot
rebind it), with the original Host header and TLS server name. Redirects are followed by hand,
each target checked the same way. Total time and bytes are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from service.errors import APIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


def url_error(message: str, code: str = "image_url_forbidden", param: str | None = None) -> APIError:
    return APIError(400, message, code, param=param)


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched from, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            if reason:
                return f"{reason} (embedded in {ip})"
        if ip.is_site_local:
            return "a site-local address"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "an unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:
        return "not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class ImageFetcher:
    """Downloads image bytes from checked URLs. `resolver`/`transport` are replaceable in tests."""

    def __init__(
        self,
        *,
        enabled: bool,
        timeout_s: float,
        max_bytes: int,
        max_redirects: int,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.resolver: Resolver = resolver or system_resolver
        self.transport = transport
        self.connections = 0  # connections attempted (tests assert it stays 0 for refused URLs)

    @staticmethod
    def is_url(text: str) -> bool:
        head = text[:10].lower()
        return head.startswith(("http://", "https://")) or (
            "://" in text[:16] and not head.startswith("data:")
        )

    async def check(self, url: str, param: str | None = None) -> tuple[str, int, str, str]:
        """(scheme, port, host, pinned ip) for a fetchable URL; raises a 400 APIError otherwise."""
        if not self.enabled:
            raise url_error(
                "image URLs are disabled on this server; send the image as base64 or a data: URI",
                "image_urls_disabled",
                param,
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise url_error(f"invalid image URL: {exc}", "invalid_image_url", param) from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise url_error(
                f"image URL scheme {scheme or '(none)'!r} is not allowed (http/https only)",
                "invalid_image_url",
                param,
            )
        host = parts.hostname
        if not host:
            raise url_error("image URL has no host", "invalid_image_url", param)
        if parts.username is not None or parts.password is not None:
            raise url_error("image URLs with credentials are not allowed", "invalid_image_url", param)
        port = port or (443 if scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await asyncio.wait_for(self.resolver(host, port), self.timeout_s)
            except (OSError, TimeoutError, UnicodeError) as exc:
                raise url_error(
                    f"cannot resolve image URL host {host!r}", "image_url_unresolvable", param
                ) from exc
            if not addresses:
                raise url_error(f"cannot resolve image URL host {host!r}", "image_url_unresolvable", param)
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address.split("%")[0]))
            if reason:
                raise url_error(
                    f"image URL host {host!r} resolves to {address}, {reason}; refused", param=param
                )
        return scheme, port, host, addresses[0]

    async def fetch(self, url: str, param: str | None = None) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        for _hop in range(self.max_redirects + 1):
            scheme, port, host, ip = await self.check(url, param)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise url_error("image URL fetch timed out", "image_url_timeout", param)
            status, location, body = await self._get(url, scheme, port, host, ip, remaining, param)
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise url_error(f"image URL answered HTTP {status}", "image_url_failed", param)
            return body
        raise url_error(
            f"image URL redirected more than {self.max_redirects} times", "image_url_failed", param
        )

    async def _get(
        self, url: str, scheme: str, port: int, host: str, ip: str, timeout: float, param: str | None
    ) -> tuple[int, str | None, bytes]:
        parts = urlsplit(url)
        ip_host = f"[{ip}]" if ":" in ip else ip
        default_port = 443 if scheme == "https" else 80
        netloc = ip_host if port == default_port else f"{ip_host}:{port}"
        pinned = parts._replace(netloc=netloc).geturl()
        host_header = host if port == default_port else f"{host}:{port}"
        self.connections += 1
        try:
            async with httpx.AsyncClient(
                transport=self.transport,
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                trust_env=False,
            ) as client:
                request = client.build_request(
                    "GET",
                    pinned,
                    headers={"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": host},
                )
                response = await asyncio.wait_for(client.send(request, stream=True), timeout)
                try:
                    if response.status_code != 200:
                        return response.status_code, response.headers.get("location"), b""
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise APIError(
                            413,
                            f"image at URL is {declared} bytes, more than the limit of {self.max_bytes}",
                            "image_too_large_bytes",
                            param=param,
                        )
                    chunks: list[bytes] = []
                    total = 0
                    async for chunk in response.aiter_bytes():
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise APIError(
                                413,
                                f"image at URL is more than the limit of {self.max_bytes} bytes",
                                "image_too_large_bytes",
                                param=param,
                            )
                        chunks.append(chunk)
                    return 200, None, b"".join(chunks)
                finally:
                    await response.aclose()
        except APIError:
            raise
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise url_error("image URL fetch timed out", "image_url_timeout", param) from exc
        except httpx.HTTPError as exc:
            raise url_error(
                f"image URL fetch failed: {type(exc).__name__}", "image_url_failed", param
            ) from exc
