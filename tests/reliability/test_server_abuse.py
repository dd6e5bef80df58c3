"""`vitkit serve` against hostile clients and web pages: decompression bombs refused from their
headers in every format (nothing decoded), a request's pixel budget, the Host header checked
against the bound address (DNS rebinding), cross-site POSTs refused, requests at once bounded,
slow bodies timed out, and the API schema off unless asked for."""

import asyncio
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import vitkit
from vitkit.model.normalization import HALF
from vitkit.serve import guard
from vitkit.serve.app import Settings, create_app, load_engine
from vitkit.serve.engine import Engine


class CountingEngine(Engine):
    """The real engine, counting the images it is asked to decode."""

    decoded = 0

    def decode(self, data: bytes, max_pixels: int | None = None):
        CountingEngine.decoded += 1
        return super().decode(data, max_pixels)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> CountingEngine:
    folder = tmp_path_factory.mktemp("served") / "run"
    model = vitkit.create_model("vit_ti4_32", depth=1, num_classes=3)
    model.normalization = HALF
    model.save_pretrained(folder, {"classes": ["a", "b", "c"]})
    loaded = load_engine(folder, dtype="fp32")
    return CountingEngine(loaded.loaded, loaded.device, loaded.dtype)


def request(engine, method: str, path: str, settings: dict | None = None, **kwargs):
    """One request to a server of these settings (started and stopped around it)."""
    with TestClient(create_app(engine, Settings(**(settings or {}))), base_url="http://127.0.0.1:8000") as client:
        return client.request(method, path, **kwargs)


def photo(width: int = 40, height: int = 30, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format=kind)
    return buffer.getvalue()


def claiming(width: int, height: int, kind: str) -> bytes:
    """A small file of `kind` whose header claims width x height pixels (what a bomb's says)."""
    if kind == "PNG":
        def chunk(name: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))
        header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 256)) + chunk(b"IEND", b"")
    data = bytearray(photo(kind=kind))
    if kind == "JPEG":  # the frame header (SOF0): height, then width
        at = data.index(b"\xff\xc0") + 5
        data[at:at + 4] = struct.pack(">HH", height, width)
    elif kind == "GIF":  # the logical screen and the first image descriptor
        data[6:10] = struct.pack("<HH", width, height)
        at = data.index(b"\x2c", 13)
        data[at + 5:at + 9] = struct.pack("<HH", width, height)
    elif kind == "BMP":  # BITMAPINFOHEADER
        data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


@pytest.mark.parametrize(("kind", "side"), [("PNG", 20000), ("JPEG", 20000), ("GIF", 20000), ("BMP", 20000),
                                          ("PNG", 30000)])  # beyond PIL's own bomb limit too
def test_a_decompression_bomb_is_refused_from_its_header_in_every_format(engine, kind, side):
    CountingEngine.decoded = 0
    bomb = claiming(side, side, kind)
    assert len(bomb) < 4000
    response = request(engine, "POST", "/predict", content=bomb)
    assert response.status_code == 413, response.text
    said = response.json()["error"]
    assert f"{side}x{side} is {side**2 / 1e6:.1f} megapixels; this server decodes at most 40" in said
    assert CountingEngine.decoded == 0


def test_a_requests_images_share_one_pixel_budget(engine):
    CountingEngine.decoded = 0
    files = [("files", (f"{i}.png", claiming(6000, 6000, "PNG"), "image/png")) for i in range(4)]  # 36 Mpx each
    response = request(engine, "POST", "/predict", files=files)
    assert response.status_code == 413 and "more than 120 megapixels" in response.json()["error"]
    assert CountingEngine.decoded == 0
    small = [("files", (f"{i}.png", photo(), "image/png")) for i in range(4)]
    assert request(engine, "POST", "/predict", files=small).status_code == 200 and CountingEngine.decoded == 4


@pytest.mark.parametrize(("bound", "allowed", "host", "answered"), [
    ("127.0.0.1", (), "127.0.0.1:8000", True),
    ("127.0.0.1", (), "localhost:8000", True),
    ("127.0.0.1", (), "[::1]:8000", True),
    ("127.0.0.1", (), "attacker.example:8000", False),  # DNS rebinding: the page's own name
    ("127.0.0.1", ("vit.lan",), "vit.lan", True),
    ("0.0.0.0", (), "anything.example", True),  # every address, no names given: no name to check
    ("0.0.0.0", ("vit.lan",), "vit.lan:8000", True),
    ("0.0.0.0", ("vit.lan",), "attacker.example", False),
])
def test_the_host_header_must_name_the_server(engine, bound, allowed, host, answered):
    response = request(engine, "GET", "/info", {"host": bound, "allow_hosts": allowed}, headers={"Host": host})
    assert (response.status_code == 200) == answered
    if not answered:
        assert response.status_code == 400 and "--allow-host" in response.json()["error"]


@pytest.mark.parametrize(("headers", "refused"), [
    ({"Origin": "http://attacker.example", "Content-Type": "text/plain"}, True),
    ({"Origin": "null"}, True),
    ({"Sec-Fetch-Site": "cross-site", "Content-Type": "multipart/form-data; boundary=x"}, True),
    ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}, False),  # the server's own page
    ({"Content-Type": "text/plain"}, False),  # curl and scripts send no Origin
])
def test_a_cross_site_post_from_a_web_page_is_refused(engine, headers, refused):
    response = request(engine, "POST", "/predict", {"host": "127.0.0.1"}, content=photo(), headers=headers)
    assert (response.status_code == 403) == refused, response.text


def test_the_api_schema_is_served_only_when_asked(engine):
    assert request(engine, "GET", "/openapi.json").status_code == 404
    assert request(engine, "GET", "/docs").status_code == 404
    assert request(engine, "GET", "/openapi.json", {"docs": True}).status_code == 200


def test_requests_beyond_the_bound_get_503_before_their_bodies_are_read():
    """Two requests at once with room for one: the second is answered 503 while the first waits."""
    release, answers = asyncio.Event(), []

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def request(middleware):
        async def send(message):
            if message["type"] == "http.response.start":
                answers.append(message["status"])
                release.set()
        scope = {"type": "http", "method": "POST", "headers": [(b"host", b"127.0.0.1")]}
        await middleware(scope, None, send)

    async def both():
        middleware = guard.Guard(app, hosts=None, pending=1)
        await asyncio.gather(request(middleware), request(middleware))
        return middleware.active

    assert asyncio.run(both()) == 0 and answers == [503, 200]


def test_a_body_that_does_not_arrive_in_time_gets_408(engine):
    async def never():
        await asyncio.Event().wait()  # a client that sent its headers and then nothing

    async def call():
        app, sent = create_app(engine, Settings(body_timeout_s=0.01)), []
        scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"1000")], "http_version": "1.1",
                 "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1), "root_path": ""}

        async def receive():
            await never()

        async def send(message):
            sent.append(message)
        await app(scope, receive, send)
        return sent

    sent = asyncio.run(call())
    assert sent[0]["status"] == 408 and b"did not arrive within 0.01 s" in sent[1]["body"]
