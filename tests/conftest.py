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
