"""The Space's README.md header (its config) and `python -m imcap_hub.space`, which writes the
model it serves into a copy of it: `models` and `preload_from_hub`, the rest kept byte for byte."""

import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.repocard import metadata_load, metadata_save

from imcap_hub.space import SpaceConfigError, main, preload_entry, set_space_model
from model_card import DEFAULT_LICENSE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture
def readme(tmp_path) -> Path:
    """A copy of the project's README.md."""
    return Path(shutil.copy(README, tmp_path / "README.md"))


def _body(path: Path) -> str:
    """What follows the YAML header."""
    return path.read_text(encoding="utf-8").split("\n---\n", 1)[1]


def test_the_header_names_license_and_tags_and_no_hub_model():
    header = metadata_load(README)
    assert header["license"] == DEFAULT_LICENSE
    assert {"image-captioning", "image-to-text", "keras", "gradio", "mcp-server"} <= set(
        header["tags"]
    )
    assert (header["sdk"], header["app_file"]) == ("gradio", "app.py")
    assert header["models"] == [] and "preload_from_hub" not in header  # the demo model


def test_the_header_is_in_the_form_the_tool_writes(readme):
    """So that the tool's diff of README.md is the lines it means to change, and no others."""
    metadata_save(readme, metadata_load(readme))
    assert readme.read_bytes() == README.read_bytes()


def test_set_a_model_then_clear_it(readme, capsys):
    before = metadata_load(readme)
    assert main(["someone/imcap-flickr8k", "--readme", str(readme)]) == 0
    header = metadata_load(readme)
    assert header["models"] == ["someone/imcap-flickr8k"]
    assert header["preload_from_hub"] == ["someone/imcap-flickr8k"]
    assert {k: v for k, v in header.items() if k not in ("models", "preload_from_hub")} == {
        k: v for k, v in before.items() if k != "models"
    }
    assert _body(readme) == _body(README)
    assert "IMCAP_MODEL=someone/imcap-flickr8k" in capsys.readouterr().out

    assert main(["--clear", "--readme", str(readme)]) == 0
    assert readme.read_bytes() == README.read_bytes()


def test_a_revision_pins_the_models_files_at_its_commit(hub_server, tiny_model_dir, readme, capsys):
    repo_id = hub_server.new_repo_id("space-model")
    api = HfApi(token=hub_server.token)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tiny_model_dir)
    api.upload_file(repo_id=repo_id, path_or_fileobj=b"not imcap", path_in_repo="notes.txt")
    commit = api.model_info(repo_id).sha
    assert main([repo_id, "--revision", "main", "--readme", str(readme)]) == 0
    files = sorted(p.name for p in tiny_model_dir.iterdir())  # README.md, config.json, ...
    header = metadata_load(readme)
    (entry,) = header["preload_from_hub"]
    name, listed, pinned = entry.split(" ")
    assert (name, pinned, header["models"]) == (repo_id, commit, [repo_id])
    assert sorted(listed.split(",")) == files and "notes.txt" not in listed
    assert f"IMCAP_REVISION={commit}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a repo id!"], "'not a repo id!' is not a valid Hub repo id"),
        (["someone/missing", "--revision", "main"], "cannot resolve someone/missing@main"),
    ],
)
def test_errors_are_one_line_and_leave_the_readme(hub_server, readme, capsys, args, message):
    assert main([*args, "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}")
    assert err.count("\n") == 1
    assert readme.read_bytes() == README.read_bytes()


def test_an_unknown_revision_or_a_repo_that_is_no_model(hub_server, readme, capsys):
    repo_id = hub_server.new_repo_id("not-imcap")
    api = HfApi(token=hub_server.token)
    api.create_repo(repo_id)
    api.upload_file(repo_id=repo_id, path_or_fileobj=b"x", path_in_repo="notes.txt")
    assert main([repo_id, "--revision", "main", "--readme", str(readme)]) == 2
    assert "has no config.json: not an imcap model" in capsys.readouterr().err
    assert main([repo_id, "--revision", "no-such-branch", "--readme", str(readme)]) == 2
    assert f"cannot resolve {repo_id}@no-such-branch" in capsys.readouterr().err
    assert readme.read_bytes() == README.read_bytes()


def test_a_readme_without_a_header_is_refused(tmp_path):
    plain = tmp_path / "README.md"
    plain.write_text("# not a Space\n", encoding="utf-8")
    with pytest.raises(SpaceConfigError, match="no YAML header"):
        set_space_model(plain, "someone/model")
    with pytest.raises(SpaceConfigError, match="cannot read"):
        set_space_model(tmp_path / "missing.md", "someone/model")
    assert plain.read_text(encoding="utf-8") == "# not a Space\n"


def test_preload_entry_formats():
    assert preload_entry("a/b") == "a/b"
    assert preload_entry("a/b", "c" * 40, ["config.json", "vocab.json"]) == (
        f"a/b config.json,vocab.json {'c' * 40}"
    )
    with pytest.raises(SpaceConfigError, match="list of files"):
        preload_entry("a/b", "c" * 40, [])
