"""app.py through gradio_client: /caption, /caption_details, /model_info, errors, batching,
model sources (demo fallback, Hub revision), and the example images against the demo model."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app
from imcap_hub import ImageCaptioner
from imcap_hub.demo import DEMO_MODEL_DIR, demo_model_available

EXAMPLES = Path(app.__file__).parent / "examples"
BAD_MESSAGES = {
    "text_named_jpg": r"'x\.jpg': not an image",
    "truncated_jpeg": r"'truncated\.jpg': the image data is damaged or truncated",
    "huge_png": r"'huge\.png': image is (30000x30000 pixels|too large)",
}


@pytest.fixture(scope="module")
def client(app_server):
    return app_server.client()


@pytest.fixture(scope="module")
def python_api(app_model_dir):
    """The same model through the Python API, as a user would load it."""
    return ImageCaptioner.from_pretrained(app_model_dir)


def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/caption", "/caption_details", "/model_info"} <= set(endpoints)
    params = [p["parameter_name"] for p in endpoints["/caption_details"]["parameters"]]
    assert params[:5] == ["image", "decoding", "beam_size", "num_captions", "max_length"]


def test_caption_matches_python_api(client, python_api, image_files):
    for path in image_files["good"]:
        expected = python_api.caption(path)[0].text
        assert expected  # the untrained tiny model still writes words
        assert client.predict(handle_file(path), api_name="/caption") == expected
        details = client.predict(handle_file(path), api_name="/caption_details")
        assert details["caption"] == expected  # the UI's endpoint, default options


def test_caption_details_nbest_timings_and_model(client, python_api, image_files, app_server):
    path = image_files["good"][0]
    details = client.predict(
        handle_file(path), decoding="beam", beam_size=4, num_captions=3, api_name="/caption_details"
    )
    expected = python_api.caption(path, beam_size=4, num_captions=3)
    assert [c["text"] for c in details["captions"]] == [c.text for c in expected]
    scores = [c["score"] for c in details["captions"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert {"load", "encode", "decode", "total"} <= set(details["timings_ms"])
    assert details["options"]["beam_size"] == 4
    model = details["model"]
    assert model["model_id"] == str(Path(app_server.loaded.model.info()["model_id"]))
    assert model["source"] == "local" and model["revision"] is None
    assert model["is_demo_model"] is False and model["notice"] is None
    assert model["runtime"]

    greedy = client.predict(handle_file(path), decoding="greedy", api_name="/caption_details")
    assert greedy["caption"] == python_api.caption(path, decoding="greedy")[0].text
    sampled = client.predict(
        handle_file(path), "sample", 3, 2, 5, 0.7, 0.9, 7, api_name="/caption_details"
    )
    assert [c["text"] for c in sampled["captions"]] == [
        c.text
        for c in python_api.caption(
            path,
            decoding="sample",
            num_captions=2,
            max_length=5,
            temperature=0.7,
            top_p=0.9,
            seed=7,
        )
    ]
    assert all(len(c["tokens"]) <= 5 for c in sampled["captions"])


def test_bad_options_get_a_clear_message(client, image_files):
    path = handle_file(image_files["good"][0])
    with pytest.raises(AppError, match="num_captions must be an integer from 1 to 3"):
        client.predict(path, "beam", 3, 5, api_name="/caption_details")
    with pytest.raises(AppError, match="decoding must be one of"):
        client.predict(path, "nonsense", api_name="/caption_details")


@pytest.mark.parametrize("kind", sorted(BAD_MESSAGES))
def test_bad_upload_is_refused_and_the_app_keeps_serving(client, image_files, python_api, kind):
    bad = handle_file(image_files["bad"][kind])
    for endpoint in ("/caption", "/caption_details"):
        with pytest.raises(Exception, match=BAD_MESSAGES[kind]) as info:
            client.predict(bad, api_name=endpoint)
        assert "/tmp" not in str(info.value)  # the user's file name, not the server's path
    good = image_files["good"][0]
    assert (
        client.predict(handle_file(good), api_name="/caption") == python_api.caption(good)[0].text
    )


def test_upload_over_max_file_size_is_refused(client, tmp_path, image_files, python_api):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(app.MAX_UPLOAD_MB * 2**20 + 1024))
    with pytest.raises(Exception, match=r"(?i)too large|exceeds|maximum|413"):
        client.predict(handle_file(big), api_name="/caption")
    good = image_files["good"][1]
    assert (
        client.predict(handle_file(good), api_name="/caption") == python_api.caption(good)[0].text
    )


def test_concurrent_caption_requests_are_batched(app_server, image_files, python_api):
    """Requests queued while the model is busy reach the model as one batch, one encoder call;
    a bad image among them is refused alone (the validator keeps it out of the batch)."""
    good = [str(p) for p in image_files["good"]]
    expected = {p: python_api.caption(p)[0].text for p in good}
    inputs = [good[i % 2] for i in range(7)] + [str(image_files["bad"]["text_named_jpg"])]
    clients = [app_server.client() for _ in inputs]
    service = app_server.service
    service.batch_sizes.clear()
    results: list[object] = [None] * len(inputs)

    def call(i: int) -> None:
        try:
            results[i] = clients[i].predict(handle_file(inputs[i]), api_name="/caption")
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    with service._lock:  # the model is busy: everything queues up behind it
        for t in threads:
            t.start()
        # The first batch is in the model (waiting for the lock); wait for the rest to queue.
        deadline = time.monotonic() + 60
        while (
            sum(service.batch_sizes) + len(app_server.demo._queue) < 7
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(0.2)
    for t in threads:
        t.join(60)
    for path, result in zip(inputs[:-1], results[:-1]):
        assert result == expected[path]
    assert isinstance(results[-1], Exception) and "not an image" in str(results[-1])
    assert sum(service.batch_sizes) == 7
    # The first request(s) went in alone; all that queued behind them came as one batch.
    assert len(service.batch_sizes) <= 3 and max(service.batch_sizes) >= 3, list(
        service.batch_sizes
    )


def test_model_info(client, app_server):
    info = client.predict(api_name="/model_info")
    assert info["source"] == "local" and info["is_demo_model"] is False
    assert info["runtime"] == app_server.loaded.model.info()["runtime"]["name"]
    assert info["config"]["vocab_size"] == app_server.loaded.model.config.vocab_size
    assert info["warmup_seconds"] > 0  # warmed up at start-up, not on the first request


def test_page_has_the_controls_and_model_panel(app_server):
    import httpx

    config = httpx.get(f"{app_server.url}/config", timeout=10).json()
    props = [c.get("props", {}) for c in config["components"]]
    image = next(p for p in props if p.get("elem_id") == "input-image")
    assert set(image["sources"]) == {"upload", "webcam", "clipboard"}
    best = next(p for p in props if p.get("elem_id") == "best-caption")
    assert "copy" in json.dumps(best.get("buttons"))
    panel = next(p for p in props if p.get("elem_id") == "model-panel")["value"]
    assert "Revision" in panel and "Runtime" in panel and "Trained on" in panel
    labels = {p.get("label") for p in props}
    assert {"Decoding", "Beam width (beam search)", "Number of captions"} <= labels
    beam = next(p for p in props if p.get("label") == "Beam width (beam search)")
    assert beam["value"] == 3
    assert config.get("max_file_size") == app.MAX_UPLOAD_MB * 1000**2 or config.get("max_file_size")


@pytest.mark.skipif(not app.mcp_available(), reason="the mcp package is not installed")
def test_mcp_server_lists_and_calls_the_tools(app_server, image_files, python_api):
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    good = image_files["good"][1]
    data_url = "data:image/png;base64," + base64.b64encode(good.read_bytes()).decode()

    async def session():
        async with (
            streamablehttp_client(f"{app_server.url}/gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            answer = await s.call_tool("caption", {"image": data_url})
            return tools, answer

    tools, answer = asyncio.run(session())
    assert {"caption", "caption_details", "model_info"} <= tools
    assert not answer.isError
    assert answer.content[0].text == python_api.caption(good)[0].text


# --- model sources ------------------------------------------------------------------------------


def _demo_is(monkeypatch, folder):
    monkeypatch.setattr(app, "DEMO_MODEL_DIR", Path(folder) if folder else Path("/nonexistent"))
    monkeypatch.setattr(app, "demo_model_available", lambda: folder is not None)


def test_nothing_configured_serves_the_demo_model_and_says_so(monkeypatch, tiny_model_dir):
    _demo_is(monkeypatch, tiny_model_dir)
    loaded = app.load_model(None, warmup=False)
    assert loaded.is_demo and "demo model" in loaded.notice
    info = app.model_info(loaded)
    assert info["is_demo_model"] and info["source"] == "demo" and info["notice"]
    blocks = app.build_app(loaded)
    notices = [
        c["props"]["value"]
        for c in blocks.get_config_file()["components"]
        if c.get("props", {}).get("elem_id") == "model-notice"
    ]
    assert notices and "demo model" in notices[0]


def test_unreachable_hub_falls_back_to_the_demo_model(monkeypatch, tiny_model_dir, hub_server):
    """Offline (as huggingface_hub sees it) and not cached: the demo model, with a notice."""
    from huggingface_hub import constants

    _demo_is(monkeypatch, tiny_model_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo_id = hub_server.new_repo_id("never-cached")
    loaded = app.load_model(repo_id, warmup=False)
    assert (
        loaded.is_demo and repo_id in loaded.notice and "Hub could not be reached" in loaded.notice
    )
    info = app.model_info(loaded)
    assert info["requested_model"] == repo_id and info["is_demo_model"]


def test_no_demo_model_and_nothing_configured_fails_clearly(monkeypatch):
    _demo_is(monkeypatch, None)
    with pytest.raises(app.AppConfigError, match="demo model is not present.*--model"):
        app.load_model(None)
    assert app.main(["--model", "/nonexistent/model"]) == 2


def test_a_wrong_model_name_is_an_error_not_the_demo(monkeypatch, tiny_model_dir, hub_server):
    _demo_is(monkeypatch, tiny_model_dir)
    with pytest.raises(app.AppConfigError, match="not found on the Hub"):
        app.load_model(hub_server.new_repo_id("missing"), warmup=False)


def test_hub_model_shows_its_commit_hash(tiny_captioner, hub_server):
    repo_id = hub_server.new_repo_id("app")
    tiny_captioner.push_to_hub(repo_id, token=hub_server.token)
    loaded = app.load_model(repo_id, "main", token=hub_server.token, warmup=False)
    info = app.model_info(loaded)
    assert info["source"] == "hub" and info["model_id"] == repo_id
    assert re.fullmatch(r"[0-9a-f]{40}", info["revision"])
    assert info["requested_revision"] == "main"
    assert info["revision"] in app.model_panel_markdown(info)


# --- the example images -------------------------------------------------------------------------


def test_examples_are_small_synthetic_pngs():
    index = json.loads((EXAMPLES / "examples.json").read_text())
    assert len(index) >= 3
    for name in index:
        assert (EXAMPLES / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (EXAMPLES / name).stat().st_size < 40_000
    assert sorted(app.example_images()) == sorted(str(EXAMPLES / n) for n in index)


@pytest.mark.skipif(not demo_model_available(), reason="the bundled demo model has not landed")
def test_demo_model_captions_every_example_correctly():
    model = ImageCaptioner.from_pretrained(DEMO_MODEL_DIR)
    index = json.loads((EXAMPLES / "examples.json").read_text())
    for name, reference in index.items():
        assert model.caption(EXAMPLES / name)[0].text == reference, name
