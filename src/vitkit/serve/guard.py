"""What keeps `vitkit serve` from being tied up or misused by its clients, or by web pages.

- Pixels: each image's and each request's decoded size, read from the images' headers before
  any pixel is decoded (a 48 KiB PNG can claim 20000 x 20000 pixels), for every format.
- Requests at once: at most `pending` in the server; more get 503 at once, before their bodies
  are read, so a flood waits in the clients, not in the server's memory.
- Host names: the `Host` header must name the server as it is served (its loopback address,
  `localhost`, or the names given with --allow-host): a web page that rebinds its own DNS name to
  127.0.0.1 reaches the port, but its requests carry its own name and are refused.
- Cross-site requests: a browser's POST from another site (an `Origin` that is not the server's
  own, or `Sec-Fetch-Site: cross-site`) is refused, so no web page can spend the server's compute.
  Scripts and command-line clients send neither header; the server's own page is same-origin.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from vitkit.data.decode import BadImage, header_size

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
ANY = ("", "0.0.0.0", "::")


def allowed_hosts(host: str | None, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The names a server bound to `host` answers to; None: any (bound to every address with no
    --allow-host, or not bound at all: an app under test)."""
    extra = frozenset(name_of(name) for name in extra)
    if host is None or host in ANY:
        return extra or None
    host = name_of(host)
    return (LOOPBACK if host in LOOPBACK or _is_loopback(host) else frozenset({host})) | extra


def name_of(host: str) -> str:
    """`Example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cross_site(headers: dict[str, str]) -> bool:
    """A browser's request from another site: its Origin is not this server, or it says so."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin, host = headers.get("origin"), headers.get("host", "").lower()
    return origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host)


def over_budget(uploads: list[tuple[str, bytes]], image_pixels: int, request_pixels: int) -> tuple[int, str] | None:
    """(status, reason) for the first image over the budgets, from the headers alone; else None."""
    total = 0
    for name, data in uploads:
        try:
            width, height = header_size(data)
        except BadImage as e:
            return 400, f"{name}: cannot use this image: {' '.join(str(e).split())[:300]}"
        if width * height > image_pixels:
            return 413, (f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels; this server decodes "
                         f"at most {image_pixels / 1e6:g} an image (--max-image-mpx)")
        total += width * height
        if total > request_pixels:
            return 413, (f"the request's images add up to more than {request_pixels / 1e6:g} megapixels "
                         "(--max-request-mpx); send fewer or smaller images at once")
    return None


class Guard:
    """ASGI middleware: the host check, the cross-site check and the bound on requests at once."""

    def __init__(self, app, hosts: frozenset[str] | None, pending: int):
        self.app, self.hosts, self.pending, self.active = app, hosts, pending, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and name_of(host) not in self.hosts:
            return await _refuse(send, 400, f"Host {host!r} is not a name this server answers to; reach it as "
                                            f"{sorted(self.hosts)[0]}, or start it with --allow-host {name_of(host)}")
        if scope["method"] == "POST" and cross_site(headers):
            return await _refuse(send, 403, "a cross-site request from a web page; the server answers its own "
                                            "page and programs, not other sites")
        if self.active >= self.pending:
            return await _refuse(send, 503, f"busy: {self.active} requests in progress; retry shortly",
                                 [(b"retry-after", b"1")])
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _refuse(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
