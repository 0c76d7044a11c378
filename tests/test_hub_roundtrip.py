"""push_to_hub and from_pretrained through the real huggingface_hub client and the local Hub."""

import numpy as np
import pytest
from helpers import random_image, tiny_attention_config

from imcap_hub import ImageCaptioner, ModelLoadError

IMAGES = [random_image(seed) for seed in range(3)]


def _captions(model):
    return [
        [c.to_dict() for c in model.caption(img, beam_size=3, num_captions=3)] for img in IMAGES
    ]


@pytest.fixture(scope="module")
def pushed(hub_server, tiny_captioner):
    repo_id = hub_server.new_repo_id("captioner")
    tiny_captioner.push_to_hub(repo_id, token=hub_server.token)
    return repo_id


@pytest.fixture(scope="module")
def tiny_attention_captioner(tiny_vocab):
    return ImageCaptioner.from_config(tiny_attention_config(), tiny_vocab, seed=0, runtime="keras")


@pytest.mark.parametrize("kind", ["pooled", "attention"])
def test_push_then_from_pretrained_gives_identical_captions(
    hub_server, tiny_captioner, tiny_attention_captioner, tmp_path, kind
):
    original = tiny_captioner if kind == "pooled" else tiny_attention_captioner
    repo_id = hub_server.new_repo_id(f"captioner-{kind}")
    original.push_to_hub(repo_id, token=hub_server.token)
    model = ImageCaptioner.from_pretrained(repo_id, cache_dir=tmp_path, runtime="keras")
    assert _captions(model) == _captions(original)
    assert model.config == original.config
    assert model.source["kind"] == "hub" and model.source["model_id"] == repo_id
    assert len(model.source["revision"]) == 40
    if kind == "attention":
        best = model.caption(IMAGES[0], return_attention=True)[0]
        want = original.caption(IMAGES[0], return_attention=True)[0]
        np.testing.assert_array_equal(best.attention, want.attention)


def test_older_revision_loads_by_commit_hash(hub_server, tiny_vocab, tmp_path):
    from helpers import tiny_config

    repo_id = hub_server.new_repo_id("revisions")
    first = ImageCaptioner.from_config(tiny_config(), tiny_vocab, seed=1, runtime="keras")
    second = ImageCaptioner.from_config(tiny_config(), tiny_vocab, seed=2, runtime="keras")
    commit = first.push_to_hub(repo_id, token=hub_server.token)
    second.push_to_hub(repo_id, token=hub_server.token)
    old_hash = commit.oid

    latest = ImageCaptioner.from_pretrained(repo_id, cache_dir=tmp_path, runtime="keras")
    old = ImageCaptioner.from_pretrained(
        repo_id, revision=old_hash, cache_dir=tmp_path, runtime="keras"
    )
    assert old.source["revision"] == old_hash != latest.source["revision"]
    assert _captions(old) == _captions(first)
    assert _captions(latest) == _captions(second)
    assert _captions(old) != _captions(latest)


def test_local_files_only_uses_the_cache(pushed, tiny_captioner, tmp_path):
    ImageCaptioner.from_pretrained(pushed, cache_dir=tmp_path, runtime="keras")
    offline = ImageCaptioner.from_pretrained(
        pushed, cache_dir=tmp_path, local_files_only=True, runtime="keras"
    )
    assert _captions(offline) == _captions(tiny_captioner)


def test_not_cached_and_offline_is_a_clear_error(pushed, tmp_path):
    with pytest.raises(ModelLoadError, match="not in the local cache") as info:
        ImageCaptioner.from_pretrained(pushed, cache_dir=tmp_path, local_files_only=True)
    assert info.value.reason == "offline"


def test_wrong_token_is_refused_with_a_clear_message(hub_server, tiny_captioner, pushed, tmp_path):
    with pytest.raises(ModelLoadError, match="refused the token") as info:
        ImageCaptioner.from_pretrained(pushed, cache_dir=tmp_path, token="hf_wrong")
    assert info.value.reason == "unauthorized"
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as info:
        tiny_captioner.push_to_hub(pushed, token="hf_wrong")
    assert info.value.response.status_code == 401


@pytest.mark.parametrize(
    ("revision", "message"),
    [(None, "not found on the Hub"), ("no-such-branch", "has no revision 'no-such-branch'")],
)
def test_missing_repo_or_revision(hub_server, pushed, tmp_path, revision, message):
    repo = "tester/does-not-exist" if revision is None else pushed
    with pytest.raises(ModelLoadError, match=message):
        ImageCaptioner.from_pretrained(repo, revision=revision, cache_dir=tmp_path)


def test_a_snapshot_folder_of_the_hub_cache_loads_as_a_local_folder(
    pushed, tiny_captioner, tmp_path
):
    """Its files are links into ../../blobs: outside the folder, but inside the cached repo."""
    from pathlib import Path

    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(pushed, cache_dir=tmp_path))
    assert (folder / "model.safetensors").is_symlink()
    model = ImageCaptioner.from_pretrained(folder, runtime="keras")
    assert model.source["kind"] == "local"
    assert _captions(model) == _captions(tiny_captioner)
