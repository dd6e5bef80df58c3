"""`vitkit serve`: the API through FastAPI's test client (answers checked against `vitkit predict`
and `vitkit.explain` on the same images), the batcher, the command, and the page in headless
Chromium driven by Selenium."""

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import vitkit
from helpers import randomize
from vitkit.cli import main
from vitkit.data.decode import read_image
from vitkit.data.transforms import eval_transform
from vitkit.explain import maps
from vitkit.infer import predict
from vitkit.model.normalization import IMAGENET, to_model_input
from vitkit.serve.app import Settings, create_app, load_engine
from vitkit.serve.batcher import Batcher

CLASSES = ["cat", "dog", "ship", "frog", "<b>bold</b>"]
BODY_LIMIT_MB = 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small random model (random head too, so that the classes differ per image) saved the way
    `vitkit train` saves one, with ImageNet's normalization rather than vitkit's default."""
    root = tmp_path_factory.mktemp("serve") / "run"
    torch.manual_seed(0)
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=len(CLASSES)), seed=3)
    model.normalization = IMAGENET
    model.save_pretrained(root, extra={"classes": CLASSES})
    return root


@pytest.fixture(scope="module")
def engine(run_dir):
    return load_engine(run_dir, dtype="fp32")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, Settings(max_wait_ms=30, max_body_mb=BODY_LIMIT_MB))) as c:
        yield c


def image_bytes(seed: int, size=(40, 30), mode="RGB", fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_top(run_dir: Path, data: bytes, tmp_path: Path, name: str = "x.png") -> list[dict]:
    """What `vitkit predict` says for the same file."""
    path = tmp_path / name
    path.write_bytes(data)
    [result] = predict(run_dir, [str(path)], topk=5)
    return result["top"]


def assert_same_top(got: list[dict], want: list[dict]) -> None:
    assert [g["class"] for g in got] == [w["class"] for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w["probability"] for w in want], abs=1e-5)


# -- the API -----------------------------------------------------------------------------------
def test_predict_one_image_sent_as_the_body_matches_vitkit_predict(client, run_dir, tmp_path):
    data = image_bytes(1)
    response = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    [answer] = response.json()["predictions"]
    assert len(answer["top"]) == 5
    assert_same_top(answer["top"], expected_top(run_dir, data, tmp_path))
    top2 = client.post("/predict?topk=2", content=data).json()["predictions"][0]["top"]
    assert [g["class"] for g in top2] == [g["class"] for g in answer["top"][:2]]


def test_predict_several_multipart_images_answers_each_in_order(client, run_dir, tmp_path):
    images = [("a.png", image_bytes(2)), ("b.jpg", image_bytes(3, fmt="JPEG")),
              ("c.png", image_bytes(4, mode="L")), ("d.png", image_bytes(5, mode="RGBA", size=(64, 20)))]
    response = client.post("/predict", files=[("image", (name, data, "image/*")) for name, data in images])
    assert response.status_code == 200
    answers = response.json()["predictions"]
    assert [a["image"] for a in answers] == [name for name, _ in images]
    for answer, (name, data) in zip(answers, images, strict=True):
        assert_same_top(answer["top"], expected_top(run_dir, data, tmp_path, name))
    assert len({a["top"][0]["class"] for a in answers}) > 1  # the images are told apart


def test_concurrent_requests_are_batched_and_each_answered_with_its_own_images(client, run_dir, tmp_path):
    before = client.get("/health").json()
    requests = [[image_bytes(100 + 2 * i)] if i % 2 else [image_bytes(100 + 2 * i), image_bytes(101 + 2 * i)]
                for i in range(24)]

    def send(images):
        if len(images) == 1:
            return client.post("/predict", content=images[0])
        return client.post("/predict", files=[("image", (f"{j}.png", d, "image/png")) for j, d in enumerate(images)])

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(send, requests))
    for images, response in zip(requests, responses, strict=True):
        assert response.status_code == 200
        answers = response.json()["predictions"]
        assert len(answers) == len(images)
        for answer, data in zip(answers, images, strict=True):
            assert_same_top(answer["top"], expected_top(run_dir, data, tmp_path))
    after = client.get("/health").json()
    sent = sum(len(images) for images in requests)
    assert after["images"] - before["images"] == sent
    assert after["batches"] - before["batches"] < len(requests)  # requests shared forward passes


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring 900 Mpx, over the loaders' decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("body", "reason", "status"), [
    (b"this is not an image", "not an image file", 400),
    (image_bytes(6)[:120], "truncated", 400),
    (b"", "no image in the request", 400),
    (bomb_png(), "30000x30000 is 900.0 megapixels", 413),  # refused from its header: reliability/test_server_abuse
], ids=["not-an-image", "truncated", "empty", "bomb"])
def test_a_bad_image_gets_a_one_line_reason_and_the_server_goes_on(client, body, reason, status):
    response = client.post("/predict", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert reason in error and "\n" not in error
    assert client.post("/predict", content=image_bytes(7)).status_code == 200


def test_one_bad_image_among_several_is_named(client):
    files = [("image", ("good.png", image_bytes(8), "image/png")), ("image", ("bad.png", b"nope", "image/png"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad.png: ")


def test_a_request_body_naming_a_server_file_is_only_bytes(client, tmp_path):
    path = tmp_path / "on-the-server.png"
    path.write_bytes(image_bytes(9))
    response = client.post("/predict", content=str(path).encode())
    assert response.status_code == 400
    assert "not an image file" in response.json()["error"]


def test_oversized_bodies_get_413_and_the_server_goes_on(client):
    big = b"\0" * (BODY_LIMIT_MB * 2**20 + 1)
    assert client.post("/predict", content=big).status_code == 413  # told by Content-Length
    chunked = client.post("/predict", content=iter([big[:2**19]] * 3))  # no Content-Length
    assert chunked.status_code == 413
    assert f"limit of {BODY_LIMIT_MB * 2**20} bytes" in chunked.json()["error"]
    multipart = client.post("/predict", files=[("image", ("big.png", big, "image/png"))])
    assert multipart.status_code == 413
    assert client.post("/predict", content=image_bytes(10)).status_code == 200


def test_explain_gives_the_rollout_map_as_numbers_and_as_an_overlay_png(client, engine, run_dir):
    data = image_bytes(11)
    response = client.post("/explain", content=data)
    assert response.status_code == 200
    body = response.json()
    config = engine.config
    image = eval_transform(config.image_hw)(read_image(data, 3))
    want = maps.rollout(vitkit.load(run_dir), to_model_input(image[None], IMAGENET))[0]
    assert body["method"] == "rollout" and body["grid"] == list(config.grid)
    torch.testing.assert_close(torch.tensor(body["map"]), want, atol=1e-5, rtol=1e-4)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and min(overlay.size) >= 256
    assert body["top"][0]["class"] == client.post("/predict", content=data).json()["predictions"][0]["top"][0]["class"]
    png = client.post("/explain?format=png", content=data)
    assert png.headers["content-type"] == "image/png" and png.content == base64.b64decode(body["overlay_png"])


def test_explain_methods_of_vitkit_explain(client, engine):
    data = image_bytes(12)
    heads = client.post("/explain?method=last-layer", content=data).json()
    assert np.array(heads["map"]).shape == (engine.config.heads, *engine.config.grid)
    grad = client.post("/explain?method=grad-rollout&class=ship", content=data)
    assert grad.status_code == 200 and grad.json()["class"] == "ship"
    assert np.isclose(np.array(grad.json()["map"]).sum(), 1.0)
    unknown = client.post("/explain?method=grad-rollout&class=whale", content=data)
    assert unknown.status_code == 400 and "whale" in unknown.json()["error"]
    assert client.post("/explain?method=gradcam", content=data).status_code == 422


def test_info_describes_the_model_health_answers_and_the_page_loads_nothing_from_elsewhere(client, engine):
    info = client.get("/info").json()
    assert info["classes"] == CLASSES
    assert info["image_size"] == [32, 32] and info["normalize"] == IMAGENET.to_dict()
    assert info["model"]["parameters"] == engine.loaded.model.num_parameters()
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]  # the page loads nothing from elsewhere


def test_any_weights_vitkit_loads_are_served_with_numbered_classes_and_their_normalization(run_dir, tmp_path):
    path = vitkit.save(vitkit.load(run_dir), tmp_path / "timm", format="timm")
    served = load_engine(path, dtype="fp32")
    assert served.classes == ["0", "1", "2", "3", "4"]
    with TestClient(create_app(served)) as c:
        top = c.post("/predict", content=image_bytes(13)).json()["predictions"][0]["top"]
    want = expected_top(run_dir, image_bytes(13), tmp_path)
    assert [g["class"] for g in top] == [str(CLASSES.index(w["class"])) for w in want]
    assert [g["probability"] for g in top] == pytest.approx([w["probability"] for w in want], abs=1e-5)


# -- the batcher -------------------------------------------------------------------------------
def test_batcher_takes_what_waits_up_to_the_batch_size_and_answers_in_order():
    sizes = []

    def double(items):
        sizes.append(len(items))
        return [2 * i for i in items]

    async def scenario():
        batcher = Batcher(double, max_batch=4, max_wait_s=0.05)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(10))), 10)
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [2 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_batcher_waits_for_images_still_being_decoded_but_not_for_nobody():
    sizes = []

    def same(items):
        sizes.append(len(items))
        return items

    async def decoding(value):
        await asyncio.sleep(0.1)
        return value

    async def scenario():
        batcher = Batcher(same, max_batch=8, max_wait_s=30)
        batcher.start()
        try:
            alone = await asyncio.wait_for(batcher.submit(1), 10)  # a 30 s wait would time out
            together = await asyncio.wait_for(asyncio.gather(batcher.submit(2), batcher.submit(decoding(3))), 10)
            return alone, together
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == (1, [2, 3])
    assert sizes == [1, 2]


def test_batcher_a_failed_batch_fails_its_callers_and_the_next_batch_runs():
    def fragile(items):
        if -1 in items:
            raise RuntimeError("model failed")
        return items

    async def scenario():
        batcher = Batcher(fragile, max_batch=8, max_wait_s=0.01)
        batcher.start()
        try:
            first = await asyncio.wait_for(asyncio.gather(batcher.submit(-1), batcher.submit(1),
                                                          return_exceptions=True), 10)
            return first, await asyncio.wait_for(batcher.submit(2), 10)
        finally:
            await batcher.stop()

    first, second = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) for e in first) and second == 2


# -- the command -------------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["missing", "corrupt", "zero-batch", "port-taken"])
def test_serve_refuses_to_start_with_a_one_line_error(problem, run_dir, tmp_path, capsys, monkeypatch):
    from vitkit.serve import app

    monkeypatch.setattr(app, "run", lambda *a, **k: pytest.fail("the server started"))
    argv = {"missing": ["serve", str(tmp_path / "no-such-run")],
            "corrupt": ["serve", str(tmp_path / "model.safetensors")],
            "zero-batch": ["serve", str(run_dir), "--max-batch", "0"]}.get(problem)
    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        argv = argv or ["serve", str(run_dir), "--port", str(taken.getsockname()[1])]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit serve: error: ") and "\n" not in err


@pytest.fixture(scope="module")
def live_server(run_dir):
    """`vitkit serve RUN --port 0` in its own process, as a person starts it from a terminal: with
    SIGINT's default action even when the tests run as a background job, which ignores SIGINT and
    passes that on (uvicorn then stops on Ctrl-C but re-raises it into the ignored disposition)."""
    process = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", str(run_dir), "--port", "0", "--json",
                                "--dtype", "fp32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        started = json.loads(process.stdout.readline() or "{}")
        assert "url" in started, process.stderr.read() if process.poll() is not None else "no start line"
        deadline = time.monotonic() + 60
        while True:  # the model runs its warm-up batches before the first answer
            try:
                with urllib.request.urlopen(started["url"] + "health", timeout=5) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield started["url"], process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                stopped = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                stopped = process.wait()
            assert stopped == 130, "Ctrl-C should stop the server like any vitkit command (exit 130)"


def test_the_command_serves_on_loopback(live_server, run_dir, tmp_path):
    url, process = live_server
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url + "predict", data=image_bytes(14), method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        top = json.load(r)["predictions"][0]["top"]
    assert_same_top(top, expected_top(run_dir, image_bytes(14), tmp_path))
    assert process.poll() is None


# -- the page in a real browser ----------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1000,780"]


def chromium(profile: Path):
    """Debian's chromium through its chromedriver (never a downloaded browser or driver)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_the_page_shows_the_top_classes_and_the_overlay_for_an_uploaded_image(live_server, run_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = live_server
    picture = tmp_path / "photo.png"
    picture.write_bytes(image_bytes(15, size=(96, 64)))
    want = expected_top(run_dir, picture.read_bytes(), tmp_path)
    browser = chromium(tmp_path / "profile")
    try:
        browser.get(url)
        browser.find_element(By.ID, "file").send_keys(str(picture))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                         in ("done", "error"))
        assert browser.find_element(By.ID, "status").text == ""
        names = [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, "#top .name")]
        assert names == [w["class"] for w in want]  # "<b>bold</b>" shows as text, not as markup
        assert browser.execute_script("return document.getElementById('overlay').naturalWidth") >= 256
        if os.environ.get("VITKIT_SERVE_SCREENSHOT"):
            browser.save_screenshot(os.environ["VITKIT_SERVE_SCREENSHOT"])
    finally:
        browser.quit()
