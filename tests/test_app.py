"""app.py through gradio_client: /caption, /caption_details, /model_info, errors, batching, the
page (and its demo notice), the command line's exit status, the patch of Gradio's batched
validators, and the example images against the demo model. Which model is served, and what is
said about it, is tested without a server in test_serving.py."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from unittest.mock import ANY

import gradio as gr
import numpy as np
import pytest
from gradio import queueing
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app
import imcap_hub
from imcap_hub import ImageCaptioner, gradio_fixes, serving
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("beam", 3, 5), "num_captions must be an integer from 1 to 3, got 5"),
        (("nonsense",), "decoding must be one of"),
        (("beam", 3, 1, 0), "max_length must be a positive integer \\(words\\), got 0"),
        (("beam", 2.5), "beam_size must be an integer from 1 to 20, got 2.5"),
        (("sample", 3, 1, 5, 1.0, 1.0, 0.5), "seed must be an integer"),
    ],
)
def test_bad_options_get_a_message_naming_the_option(client, image_files, options, message):
    path = handle_file(image_files["good"][0])
    with pytest.raises(AppError, match=f"Bad option: {message}"):
        client.predict(path, *options, api_name="/caption_details")


def test_integral_floats_from_sliders_are_accepted(client, python_api, image_files):
    path = image_files["good"][0]
    details = client.predict(handle_file(path), "beam", 3.0, 2.0, 5.0, api_name="/caption_details")
    assert details["options"]["beam_size"] == 3 and details["options"]["max_length"] == 5
    expected = python_api.caption(path, beam_size=3, num_captions=2, max_length=5)
    assert [c["text"] for c in details["captions"]] == [c.text for c in expected]


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


def test_a_client_given_one_ssl_context_captions_as_the_readme_advises(app_server, image_files):
    import ssl

    from gradio_client import Client

    # gradio_client 2.7 hands ssl_verify to httpx as `verify`: a context is loaded once.
    fast = Client(app_server.url, verbose=False, ssl_verify=ssl.create_default_context())
    good = image_files["good"][0]
    try:
        assert fast.predict(handle_file(good), api_name="/caption") == app_server.client().predict(
            handle_file(good), api_name="/caption"
        )
    finally:
        fast.close()


def test_upload_over_max_file_size_is_refused(client, tmp_path, image_files, python_api):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(app.MAX_UPLOAD_MB * 2**20 + 1024))
    with pytest.raises(Exception, match=r"(?i)too large|exceeds|maximum|413"):
        client.predict(handle_file(big), api_name="/caption")
    good = image_files["good"][1]
    assert (
        client.predict(handle_file(good), api_name="/caption") == python_api.caption(good)[0].text
    )


def test_uploads_are_deleted_once_older_than_the_upload_ttl(app_model_dir, image_files):
    from conftest import _serve

    server = _serve(app_model_dir, upload_ttl=2)
    try:
        running = next(server)
        running.client().predict(handle_file(image_files["good"][0]), api_name="/caption")
        uploads = [Path(p) for p in running.demo.upload_file_set]
        assert uploads and all(p.is_file() for p in uploads)
        deadline = time.monotonic() + 15  # swept every second once older than two
        while any(p.exists() for p in uploads) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(p.exists() for p in uploads)
        while any(p.parent.exists() for p in uploads) and time.monotonic() < deadline:
            time.sleep(0.2)  # and their folders, emptied by Gradio's sweep, once untouched for 2 s
        assert not any(p.parent.exists() for p in uploads)
    finally:
        server.close()
    assert app.build_app(running.loaded).delete_cache == (
        serving.DEFAULT_UPLOAD_TTL // 2,
        serving.DEFAULT_UPLOAD_TTL,
    )


def test_caption_batch_answers_each_file_and_a_bad_one_fails_only_itself(
    client, python_api, image_files
):
    good, bad = image_files["good"], image_files["bad"]["text_named_jpg"]
    answer = client.predict(
        [handle_file(good[0]), handle_file(bad), handle_file(good[1])], api_name="/caption_batch"
    )
    assert answer == [
        {"file": "good.jpg", "caption": python_api.caption(good[0])[0].text},
        {"file": "x.jpg", "error": "'x.jpg': not an image (unrecognised format)"},
        {"file": "good.png", "caption": python_api.caption(good[1])[0].text},
    ]
    with pytest.raises(AppError, match="No images"):
        client.predict([], api_name="/caption_batch")
    too_many = [handle_file(good[1])] * (serving.MAX_BATCH_FILES + 1)
    with pytest.raises(AppError, match=f"the limit is {serving.MAX_BATCH_FILES}"):
        client.predict(too_many, api_name="/caption_batch")


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
    assert config["max_file_size"] == app.MAX_UPLOAD_MB * 2**20 == app.LIMITS.max_bytes


@pytest.mark.skipif(not serving.mcp_available(), reason="the mcp package is not installed")
def test_mcp_server_answers_json_with_typed_parameters_as_imcap(
    app_server, image_files, python_api
):
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    good = image_files["good"][1]
    data_url = "data:image/png;base64," + base64.b64encode(good.read_bytes()).decode()

    async def session():
        async with (
            streamable_http_client(f"{app_server.url}/gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as s,
        ):
            init = await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            calls = {
                name: await s.call_tool(name, arguments)
                for name, arguments in [
                    ("caption", {"image": data_url}),
                    ("caption_details", {"image": data_url, "beam_size": 2, "num_captions": 2}),
                    ("caption_batch", {"images": [data_url, data_url]}),
                    ("model_info", {}),
                ]
            }
            return init.serverInfo, tools, calls

    server, tools, calls = asyncio.run(session())
    assert (server.name, server.version) == ("imcap", imcap_hub.__version__)
    assert {"caption", "caption_details", "caption_batch", "model_info"} <= set(tools)
    assert not any(answer.isError for answer in calls.values())
    expected = python_api.caption(good)[0].text
    assert calls["caption"].content[0].text == expected
    details = json.loads(calls["caption_details"].content[0].text)  # JSON text, not a repr
    assert [c["text"] for c in details["captions"]] == [
        c.text for c in python_api.caption(good, beam_size=2, num_captions=2)
    ]
    assert (
        json.loads(calls["caption_batch"].content[0].text)
        == [{"file": ANY, "caption": expected}] * 2
    )
    assert json.loads(calls["model_info"].content[0].text)["model_id"] == str(
        app_server.loaded.model.source["model_id"]
    )
    properties = tools["caption_details"].inputSchema["properties"]
    beam = properties["beam_size"]
    assert (beam["type"], beam["minimum"], beam["maximum"], beam["default"]) == (
        "integer", 1, app.MAX_BEAM_UI, 3
    )  # fmt: skip
    assert properties["num_captions"]["type"] == properties["max_length"]["type"] == "integer"
    seed = properties["seed"]
    assert (seed["type"], seed["minimum"], seed["maximum"]) == ("integer", 0, 2**32 - 1)
    assert "data:" in properties["image"]["description"]  # data URLs are advertised


# --- model sources, the command line, the source ------------------------------------------------


def _props(blocks: gr.Blocks, elem_id: str) -> list[dict]:
    components = blocks.get_config_file()["components"]
    return [c["props"] for c in components if c.get("props", {}).get("elem_id") == elem_id]


def test_the_demo_model_is_announced_on_the_page(tiny_model_dir):
    loaded = serving.load_model(None, demo_dir=tiny_model_dir, warmup=False)
    (notice,) = _props(app.build_app(loaded), "model-notice")
    assert notice["value"] == f"**Demo model.** {serving.DEMO_NOTICE}"


def test_the_model_card_body_is_on_the_page(app_server):
    """The card's body (not its metadata header) in the "Model card" accordion."""
    card = app_server.loaded.model.card
    (shown,) = _props(app_server.demo, "model-card")
    assert shown["value"] == serving.parse_card(card).body
    assert not shown["value"].startswith("---") and shown["value"].strip() in card


def test_a_model_that_cannot_be_served_exits_2_with_one_line(capsys):
    assert app.main(["--model", "/nonexistent/model", "--no-mcp"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: cannot load model '/nonexistent/model': '/nonexistent/model' is neither a model "
        "folder nor a valid Hub repo id\n"
    )


def test_app_py_is_the_page_and_its_wiring_only():
    """At most 250 lines, and no imports but imcap_hub, gradio and the standard library."""
    source = Path(app.__file__).read_text()
    assert len(source.splitlines()) <= 250
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names - {"__future__"} == {"gradio", "imcap_hub"}


# --- the patch of Gradio's batched validators --------------------------------------------------


def _unpatched():
    current = queueing.process_validation_response
    return getattr(current, "__wrapped__", current)


def test_batched_validator_patch_refuses_what_gradio_would_take_for_valid(app_server, tmp_path):
    """The /caption validator (batch=True) answers ``([verdict],)``; Gradio unbatches that to
    ``(verdict,)`` for the one request being queued, and Gradio 6.31's
    process_validation_response only reads lists: a tuple of refusals passes as valid."""
    assert gradio_fixes.accept_batched_validator_answers(queueing, gr.__version__)
    patched, original = queueing.process_validation_response, _unpatched()
    assert patched is not original
    refused = (gr.validate(False, "msg"),)
    assert original(refused) == (True, [{"is_valid": True, "message": ""}])  # the bug
    valid, data = patched(refused)
    assert valid is False and [d["message"] for d in data] == ["msg"]
    assert patched((gr.validate(True, ""),))[0] is True
    assert patched([gr.validate(False, "msg")])[0] is False  # lists as before

    # The same, through Gradio: what the queue gets from the app's own validator.
    from gradio.state_holder import SessionState

    blocks = app.build_app(app_server.loaded)  # not launched: takes files from anywhere
    (fn,) = [f for f in blocks.fns.values() if f.api_name == "caption"]
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    upload = {"path": str(bad), "orig_name": "x.jpg", "meta": {"_type": "gradio.FileData"}}
    assert fn.validator([upload])[0][0]["is_valid"] is False  # ([verdict],)
    answer = asyncio.run(
        blocks.process_api(
            block_fn=queueing.create_validator_fn(fn), inputs=[[upload]], state=SessionState(blocks)
        )
    )["data"][0]  # route_utils.call_process_api's data for one request of a batch=True event
    assert isinstance(answer, tuple)
    assert original(answer, fn)[0] is True
    valid, data = patched(answer, fn)
    assert valid is False and data[0]["message"] == "'x.jpg': not an image (unrecognised format)"


def test_batched_validator_patch_is_skipped_on_another_gradio(monkeypatch, caplog):
    original = _unpatched()
    monkeypatch.setattr(queueing, "process_validation_response", original)
    with caplog.at_level(logging.WARNING, logger="imcap_hub.gradio_fixes"):
        assert gradio_fixes.accept_batched_validator_answers(queueing, "6.32.0") is False
    assert queueing.process_validation_response is original
    (record,) = [r for r in caplog.records if r.name == "imcap_hub.gradio_fixes"]
    assert record.levelno == logging.WARNING
    assert "Skipped the batched-validator patch" in record.getMessage()
    assert gradio_fixes.PATCHED_GRADIO == "6.31.0" and "6.31.0" in record.getMessage()
    assert "6.32.0" in record.getMessage()


# --- the example images -------------------------------------------------------------------------


def test_examples_are_small_synthetic_pngs():
    index = json.loads((EXAMPLES / "examples.json").read_text())
    assert len(index) >= 3
    for name in index:
        assert (EXAMPLES / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (EXAMPLES / name).stat().st_size < 40_000
    assert sorted(str(EXAMPLES / n) for n in index) == app.EXAMPLES


@pytest.mark.skipif(not demo_model_available(), reason="the bundled demo model has not landed")
def test_demo_model_captions_every_example_correctly():
    model = ImageCaptioner.from_pretrained(DEMO_MODEL_DIR)
    index = json.loads((EXAMPLES / "examples.json").read_text())
    for name, references in index.items():
        assert model.caption(EXAMPLES / name)[0].text in references, name


def test_caption_details_with_attention_gives_each_word_its_map(
    attention_app_server, attention_model_dir, image_files
):
    from imcap_hub import ImageCaptioner

    image = image_files["good"][0]
    want = ImageCaptioner.from_pretrained(attention_model_dir).caption(
        image, decoding="greedy", return_attention=True
    )[0]
    client = attention_app_server.client()
    answer = client.predict(
        handle_file(image), "greedy", 1, 1, None, 1.0, 1.0, 0, True, api_name="/caption_details"
    )
    assert answer["caption"] == want.text
    assert [entry["word"] for entry in answer["attention"]] == [*want.tokens, "<end>"]
    for entry, grid in zip(answer["attention"], want.attention, strict=True):
        np.testing.assert_allclose(entry["grid"], grid, atol=1e-6)
        assert sum(map(sum, entry["grid"])) == pytest.approx(1.0, abs=1e-4)
    assert all("attention" not in c for c in answer["captions"])  # once, for the best caption
    plain = client.predict(handle_file(image), "greedy", api_name="/caption_details")
    assert "attention" not in plain and plain["caption"] == want.text
    beam = ImageCaptioner.from_pretrained(attention_model_dir).caption(image)[0].text
    assert client.predict(handle_file(image), api_name="/caption") == beam  # batched endpoint


def test_attention_from_a_pooled_model_is_refused_naming_it(client, image_files):
    with pytest.raises(AppError, match="return_attention: this model's decoder has no attention"):
        client.predict(
            handle_file(image_files["good"][0]), "beam", 3, 1, None, 1.0, 1.0, 0, True,
            api_name="/caption_details",
        )  # fmt: skip


# --- the patch of Gradio's upload sweep (delete_cache) -----------------------------------------


def test_the_upload_sweep_survives_an_upload_arriving_while_it_runs(tmp_path, monkeypatch):
    """An upload landing while the sweep iterates (here: when it deletes a file) made Gradio's
    sweep raise, which ended its schedule for good; the patched sweep deletes the old upload
    and keeps the new one."""
    from types import SimpleNamespace

    from gradio import route_utils

    original = getattr(route_utils.delete_files_created_by_app, "__wrapped__", None)
    original = original or route_utils.delete_files_created_by_app
    old = tmp_path / "old.png"
    uploads: set[str] = set()
    blocks = SimpleNamespace(blocks={}, temp_file_sets=[uploads])
    remove = os.remove

    def remove_while_an_upload_arrives(path):
        remove(path)
        uploads.add(str(tmp_path / f"new-{len(uploads)}.png"))

    monkeypatch.setattr(os, "remove", remove_while_an_upload_arrives)
    old.write_bytes(b"x")
    uploads.add(str(old))
    with pytest.raises(RuntimeError, match="Set changed size during iteration"):
        original(blocks, age=None)  # Gradio 6.31's own: the bug
    old.write_bytes(b"x")
    uploads.clear()
    uploads.add(str(old))
    assert gradio_fixes.sweep_uploads_safely(route_utils, gr.__version__)
    route_utils.delete_files_created_by_app(blocks, age=None)
    assert not old.exists() and uploads == {str(tmp_path / "new-1.png")}


def test_the_api_docs_describe_each_parameter_from_the_docstring(app_server):
    """The API docs page shows ``python_type.description``: the docstring's ``Args:`` text."""
    endpoints = app_server.demo.get_api_info()["named_endpoints"]
    details = {p["parameter_name"]: p for p in endpoints["/caption_details"]["parameters"]}
    assert details["beam_size"]["python_type"]["description"] == (
        "beam width (beam search), an integer."
    )
    assert "data:image/png;base64" in details["image"]["python_type"]["description"]
    assert details["beam_size"]["type"]["type"] == "integer"
    (images,) = endpoints["/caption_batch"]["parameters"]
    assert images["python_type"]["description"].startswith("at most 64 images")
