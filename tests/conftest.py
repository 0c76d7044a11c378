# --- local Hub server ---
# Every test talks to a local Hub (tests/hub_server.py) instead of huggingface.co. huggingface_hub
# reads HF_ENDPOINT, HF_HOME, ... once, when it is first imported, so this block must run before
# anything imports it: keep it at the very top of this file.
import atexit
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

import pytest


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if "huggingface_hub" in sys.modules:
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point HF_ENDPOINT at the "
        "local Hub server; tests would talk to the real Hub. Do not import it in a plugin or an "
        "outer conftest."
    )

HUB_PORT = _free_local_port()
HUB_HOME = tempfile.mkdtemp(prefix="imcap-hf-home-")
atexit.register(shutil.rmtree, HUB_HOME, ignore_errors=True)

os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"  # no Xet server here: use the git-LFS upload path
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = HUB_HOME  # fresh cache and token store: never the user's
for _var in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
):
    os.environ.pop(_var, None)

try:
    from hub_server import LocalHub
except ImportError:  # tests/ became a package
    from tests.hub_server import LocalHub


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """The local Hub, serving at ``HF_ENDPOINT`` for the whole session.

    ``.url`` (== HF_ENDPOINT), ``.token`` (write token), ``.read_token`` (read-only token),
    ``.tokens`` (all valid tokens), ``.user`` (namespace of the tokens) and
    ``.new_repo_id(name="repo")`` -> a fresh ``"tester/<name>-<n>"``.
    """
    hub = LocalHub(tmp_path_factory.mktemp("local-hub"), port=HUB_PORT)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


# --- end local Hub server ---


# --- models and images ---
# Tiny models and synthetic images, made fresh by the tests (no downloads, no shared data).
os.environ["IMCAP_CACHE"] = tempfile.mkdtemp(prefix="imcap-cache-")  # converted encoders
atexit.register(shutil.rmtree, os.environ["IMCAP_CACHE"], ignore_errors=True)

from helpers import TINY_WORDS, random_image, tiny_config  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vocab():
    from imcap_hub import Vocabulary

    return Vocabulary.build([" ".join(TINY_WORDS)])


@pytest.fixture(scope="session")
def tiny_captioner(tiny_vocab):
    """An untrained tiny captioner (random weights, Keras runtime)."""
    from imcap_hub import ImageCaptioner

    return ImageCaptioner.from_config(tiny_config(), tiny_vocab, seed=0, runtime="keras")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_captioner, tmp_path_factory):
    """``tiny_captioner`` saved with save_pretrained (read-only for tests: copy before changing)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_captioner.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """A good JPEG and PNG, and the bad inputs every entry point must refuse with one line."""
    import struct
    import zlib

    root = tmp_path_factory.mktemp("images")
    Image.fromarray(random_image(1, (60, 80))).save(root / "good.jpg", quality=90)
    Image.fromarray(random_image(2, (40, 40))).save(root / "good.png")
    (root / "x.jpg").write_text("this is a text file, not a JPEG\n")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # claims 30000x30000 RGB
    (root / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )
    return {
        "good": [root / "good.jpg", root / "good.png"],
        "bad": {
            "text_named_jpg": root / "x.jpg",
            "truncated_jpeg": root / "truncated.jpg",
            "huge_png": root / "huge.png",
        },
    }


# --- end models and images ---


# --- evaluation ---
# A small synthetic captions table (training.synthetic, Flickr8k layout) and the untrained tiny
# captioner's metrics on it (training.evaluate): shared by the evaluation, card and publish tests.
EVAL_SYNTHETIC = {"n_images": 20, "image_size": 48, "split_fractions": (0.5, 0.1, 0.4)}


@pytest.fixture(scope="session")
def eval_table(tmp_path_factory):
    """A captions table (image, caption, split) of 20 synthetic images, 8 of them in ``test``,
    4 references each, written in the Flickr8k layout and read back."""
    from training.datasets import read_dataset
    from training.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("eval-synthetic")
    write_dataset(root, SyntheticConfig(**EVAL_SYNTHETIC), "flickr8k")
    table, _ = read_dataset("flickr8k", root)
    return table


@pytest.fixture(scope="session")
def eval_metrics(tiny_captioner, eval_table):
    """``training.evaluate.evaluate`` of ``tiny_captioner`` on ``eval_table``'s test split
    (greedy and beam-3); read-only."""
    from training.evaluate import evaluate

    return evaluate(tiny_captioner, eval_table, split="test", progress=False)


# --- end evaluation ---


# --- app ---
# app.py (the Gradio Space) launched once per session on 127.0.0.1, serving the tiny model.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def app_model_dir(tiny_model_dir, tmp_path_factory):
    """``tiny_model_dir`` whose decoder never ends a caption early: an untrained model may put
    ``<end>`` first and caption everything ``""``, and the app tests must see words."""
    from safetensors.numpy import load_file, save_file

    from imcap_hub import Vocabulary

    path = tmp_path_factory.mktemp("app-model")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, path / f.name)
    weights = load_file(str(path / "model.safetensors"))
    end_id = Vocabulary.load(path / "vocab.json").end_id
    weights["logits/bias"] = weights["logits/bias"].copy()
    weights["logits/bias"][end_id] -= 50.0
    save_file(weights, str(path / "model.safetensors"))
    return path


def _serve(model_dir, **build):
    """app.py's Blocks serving ``model_dir`` on a free 127.0.0.1 port, until the generator ends;
    ``build``: more arguments for ``app.build_app``."""
    from types import SimpleNamespace

    import app

    loaded = app.load_model(str(model_dir))
    demo = app.build_app(loaded, **{"max_batch_size": 8, **build})
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=_free_local_port(),
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_kwargs(),
    )

    def client():
        from gradio_client import Client

        return Client(url, verbose=False)

    try:
        yield SimpleNamespace(
            url=url.rstrip("/"), demo=demo, loaded=loaded, service=demo.imcap_service, client=client
        )
    finally:
        demo.close()


@pytest.fixture(scope="session")
def app_server(app_model_dir):
    """app.py's Blocks serving ``app_model_dir`` on a free 127.0.0.1 port for the session.

    ``.url``, ``.demo`` (the Blocks), ``.loaded`` (serving.LoadedModel), ``.service``
    (serving.CaptionService: ``.batch_sizes``, ``._lock``), ``.client()`` (a new gradio_client.Client).
    """
    yield from _serve(app_model_dir)


@pytest.fixture(scope="session")
def attention_model_dir(tiny_vocab, tmp_path_factory):
    """A tiny untrained attention captioner (4x4 grid) whose captions have words in them."""
    from helpers import tiny_attention_config

    from imcap_hub import ImageCaptioner

    model = ImageCaptioner.from_config(tiny_attention_config(), tiny_vocab, seed=1)
    weights = dict(model.decoder_weights)
    weights["logits/bias"] = weights["logits/bias"].copy()
    weights["logits/bias"][tiny_vocab.end_id] = -3.0
    weights["att/w"] = weights["att/w"] * 40  # peaked maps, as a trained model's are
    model.set_decoder_weights(weights)
    path = tmp_path_factory.mktemp("attention-model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def attention_app_server(attention_model_dir):
    """Like ``app_server``, serving the attention model ``attention_model_dir``."""
    yield from _serve(attention_model_dir)


# --- end app ---


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """40 synthetic JPEGs of two sizes (so resizing matters), and a fake JPEG: what the
    feature-cache tests cache."""
    from training.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("feature-images")
    write_dataset(root / "a", SyntheticConfig(n_images=30, image_size=48, seed=1), "captions_txt")
    write_dataset(root / "b", SyntheticConfig(n_images=10, image_size=64, seed=2), "captions_txt")
    images = sorted(str(p) for p in root.glob("*/Images/*.jpg"))
    bad = root / "broken.jpg"
    bad.write_text("not a JPEG\n")
    return images, str(bad)
