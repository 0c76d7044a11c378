"""A real headless Chromium (Debian's, driven by Playwright) uses the app like a person: it loads
the page, uploads an image, clicks Caption and reads the caption off the page. The network is
closed: every request the page makes must go to the app itself."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from imcap_hub import ImageCaptioner

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
]


def _require_chromium() -> None:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is missing (pip install -r requirements-dev.txt)")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("IMCAP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"IMCAP_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(app_server):
    """A fresh Chromium profile and page; records every URL the page requests."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="imcap-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            service_workers="block",
        )
        context.set_default_timeout(30_000)
        page = context.pages[0] if context.pages else context.new_page()
        page.requested = []
        page.on("request", lambda r: page.requested.append(r.url))
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        try:
            yield page
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _caption_on_page(page) -> str:
    box = page.locator("#best-caption textarea")
    page.wait_for_function(
        "() => { const t = document.querySelector('#best-caption textarea');"
        " return t && t.value.trim().length > 0; }"
    )
    return box.input_value().strip()


def _upload(page, path: Path) -> None:
    clear = page.locator("#input-image button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.locator("#input-image img").first.wait_for(state="visible")


def test_upload_click_and_read_the_caption(page, app_server, image_files, app_model_dir):
    expected = ImageCaptioner.from_pretrained(app_model_dir).caption(image_files["good"][0])
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(app_server.url, wait_until="networkidle")
    assert "imcap" in page.title()
    page.locator("#model-accordion .label-wrap").first.click()  # collapsed at first
    assert page.locator("#model-panel").inner_text().count("Revision") == 1

    _upload(page, image_files["good"][0])
    page.locator("#caption-button").click()
    caption = _caption_on_page(page)
    assert caption == expected[0].text
    assert not page.locator("#nbest").is_visible()  # one caption asked for: no n-best table
    page.locator("#details .label-wrap").first.click()
    assert "ms" in page.locator("#timing").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_caption.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")

    app_host = urlparse(app_server.url).netloc
    outside = sorted(
        {
            u
            for u in page.requested
            if urlparse(u).scheme in ("http", "https", "ws", "wss")
            and urlparse(u).netloc != app_host
        }
    )
    assert not outside, f"the page fetched from outside the app: {outside}"


def test_bad_upload_shows_an_error_and_the_page_keeps_working(page, app_server, image_files):
    page.goto(app_server.url, wait_until="networkidle")
    page.locator("#input-image input[type=file]").set_input_files(
        str(image_files["bad"]["truncated_jpeg"])
    )
    page.wait_for_timeout(500)
    page.locator("#caption-button").click()
    toast = page.get_by_text("damaged or truncated")
    toast.first.wait_for(state="visible")
    assert page.locator("#best-caption textarea").input_value() == ""

    good = image_files["good"][1]
    expected = app_server.client().predict(
        __import__("gradio_client").handle_file(good), api_name="/caption"
    )
    _upload(page, good)
    page.locator("#caption-button").click()
    assert _caption_on_page(page) == expected


def test_a_pooled_model_says_it_has_no_attention(page, app_server):
    page.goto(app_server.url, wait_until="networkidle")
    page.get_by_text("Decoding options").first.click()
    option = page.locator("#attention-option input[type=checkbox]")
    assert option.is_disabled() and not option.is_checked()
    assert "has no attention" in page.locator("#attention-option").inner_text()


def test_pick_a_word_and_see_where_the_model_looked(
    page, attention_app_server, attention_model_dir
):
    image = sorted((Path(__file__).parents[1] / "examples").glob("*.png"))[0]
    best = ImageCaptioner.from_pretrained(attention_model_dir).caption(image, return_attention=True)
    words = [*best[0].tokens, "<end>"]
    page.goto(attention_app_server.url, wait_until="networkidle")
    page.get_by_text("Decoding options").first.click()
    page.locator("#attention-option input[type=checkbox]").check()
    _upload(page, image)
    page.locator("#caption-button").click()
    assert _caption_on_page(page) == best[0].text

    heat = page.locator("#attention-map img")
    heat.wait_for(state="visible")
    choices = page.locator("#attention-word label")
    choices.nth(len(words) - 1).wait_for(state="visible")
    assert [c.strip() for c in choices.all_inner_texts()] == [
        f"{i}. {w}" for i, w in enumerate(words, 1)
    ]
    strip = page.locator("#attention-strip")
    assert strip.locator("img").count() >= len(words)  # thumbnails, one per word
    first = heat.get_attribute("src")
    choices.nth(1).click()
    page.wait_for_function(
        "(old) => { const i = document.querySelector('#attention-map img');"
        " return i && i.getAttribute('src') !== old; }",
        arg=first,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_attention.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")


@pytest.mark.parametrize(("name", "width", "height"), [("phone", 390, 844), ("desktop", 1280, 900)])
def test_the_caption_is_in_view_right_after_tapping_caption(
    page, app_server, image_files, name, width, height
):
    """Phone first: the caption (and the progress shown on it) sits right under the button."""
    page.set_viewport_size({"width": width, "height": height})
    page.goto(app_server.url, wait_until="networkidle")
    _upload(page, image_files["good"][1])
    page.locator("#caption-button").click()
    assert _caption_on_page(page)
    box = page.locator("#best-caption textarea").bounding_box()
    assert page.evaluate("window.scrollY") == 0  # nothing scrolled: in view as the page was
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, box
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"))


def test_a_keyboard_reaches_caption_and_every_control_has_a_name(page, app_server, image_files):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(app_server.url, wait_until="networkidle")
    _upload(page, image_files["good"][1])
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "caption-button":
            break
    else:
        pytest.fail("Tab never reached the Caption button")
    page.keyboard.press("Enter")
    assert _caption_on_page(page)
    examples = page.locator("button.gallery-item")
    assert examples.count() >= 3
    assert all(text.strip() for text in examples.all_inner_texts())  # named, not bare images
    assert page.get_by_label("Caption").count() >= 1


def test_several_images_make_a_gallery_and_two_downloads(
    page, app_server, image_files, app_model_dir
):
    model = ImageCaptioner.from_pretrained(app_model_dir)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(app_server.url, wait_until="networkidle")
    page.get_by_role("tab", name="Several images").click()
    good, bad = image_files["good"], image_files["bad"]["text_named_jpg"]
    page.locator("#batch-files input[type=file]").set_input_files(
        [str(good[0]), str(bad), str(good[1])]
    )
    page.locator("#batch-button").click()
    page.locator("#batch-downloads a").nth(1).wait_for()
    captions = page.locator(
        "#batch-gallery .caption-label, #batch-gallery figcaption"
    ).all_inner_texts()
    assert sorted(c.strip() for c in captions) == sorted(model.caption(g)[0].text for g in good)
    assert "x.jpg" in page.locator("#batch-problems").inner_text()
    links = page.locator("#batch-downloads a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert [h.rsplit(".", 1)[-1] for h in hrefs] == ["csv", "jsonl"]
    csv_text, jsonl_text = (page.request.get(h).text() for h in hrefs)
    rows = [
        {"file": "good.jpg", "caption": model.caption(good[0])[0].text},
        {"file": "x.jpg", "error": "'x.jpg': not an image (unrecognised format)"},
        {"file": "good.png", "caption": model.caption(good[1])[0].text},
    ]
    assert [json.loads(line) for line in jsonl_text.splitlines()] == rows
    assert list(csv.DictReader(io.StringIO(csv_text))) == [
        {"file": r["file"], "caption": r.get("caption", ""), "error": r.get("error", "")}
        for r in rows
    ]
    page.screenshot(path=str(ARTIFACTS / "browser_batch_phone.png"), full_page=True)


@pytest.fixture(scope="module")
def demo_server(app_model_dir):
    """The app as a Space with no model configured: the demo model (here the tests' tiny one)."""
    from conftest import _free_local_port

    import app
    from imcap_hub import serving

    demo = app.build_app(serving.load_model(None, demo_dir=app_model_dir))
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=_free_local_port(),
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_kwargs(),
    )
    yield url
    demo.close()


def test_the_demo_notice_sits_next_to_the_caption_on_a_phone(page, demo_server, image_files):
    from imcap_hub import serving

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(demo_server, wait_until="networkidle")
    _upload(page, image_files["good"][1])
    page.locator("#caption-button").click()
    assert _caption_on_page(page)
    caption = page.locator("#best-caption").bounding_box()
    notice = page.locator("#model-notice")
    assert serving.DEMO_NOTICE.split(",")[0] in notice.inner_text()
    below = notice.bounding_box()["y"] - (caption["y"] + caption["height"])
    assert 0 <= below < 40, below  # right under the caption, nothing in between
    page.screenshot(path=str(ARTIFACTS / "browser_demo_phone.png"))
