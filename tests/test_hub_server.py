"""Tests of the local Hub server (tests/hub_server.py), driven only by the real huggingface_hub."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    constants,
    get_token,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# huggingface_hub's LFS upload passes a file object as `data=` to httpx2, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

TEXT = b"a small caption file\n"
WEIGHTS = os.urandom(24_000)  # > 10 kB and *.safetensors: uploaded through git-LFS
FILES = {"notes.txt": TEXT, "model.safetensors": WEIGHTS, "sub/dir/config.json": b'{"a": 1}\n'}


@pytest.fixture
def api(hub_server) -> HfApi:
    return HfApi(endpoint=hub_server.url, token=hub_server.token)


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def uploaded(api, hub_server, tmp_path) -> tuple[str, str]:
    """A fresh repo holding FILES in one upload_folder commit: (repo_id, commit hash)."""
    repo_id = hub_server.new_repo_id()
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=_write_tree(tmp_path / "src", FILES))
    return repo_id, info.oid


def test_environment_points_at_local_hub(hub_server):
    assert constants.ENDPOINT == hub_server.url == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET
    assert Path(constants.HF_HUB_CACHE).is_relative_to(os.environ["HF_HOME"])  # a fresh temp dir
    assert get_token() is None  # neither HF_TOKEN nor the user's stored token


def test_create_repo_and_exist_ok(api, hub_server):
    repo_id = hub_server.new_repo_id()
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id
    assert url == f"{hub_server.url}/{repo_id}"

    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_repo(repo_id)
    assert exc_info.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id

    info = api.model_info(repo_id)
    assert info.id == repo_id and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert api.repo_exists(repo_id)
    assert not api.repo_exists(hub_server.new_repo_id("missing"))
    assert api.whoami()["name"] == hub_server.user


@pytest.mark.parametrize(
    ("filename", "is_lfs"),
    [("notes.txt", False), ("model.safetensors", True), ("sub/dir/config.json", False)],
)
@pytest.mark.parametrize("revision", [None, "main", "commit"])
def test_upload_folder_then_download(api, uploaded, filename, is_lfs, revision):
    repo_id, commit = uploaded
    rev = commit if revision == "commit" else revision
    path = hf_hub_download(repo_id, filename, revision=rev)
    assert Path(path).read_bytes() == FILES[filename]
    assert Path(path).as_posix().endswith(f"/snapshots/{commit}/{filename}")

    info = api.model_info(repo_id, revision=rev, files_metadata=True)
    assert info.sha == commit
    sibling = next(s for s in info.siblings if s.rfilename == filename)
    assert sibling.size == len(FILES[filename])
    assert (sibling.lfs is not None) == is_lfs


@pytest.mark.parametrize("changed", ["notes.txt", "model.safetensors"])
def test_second_commit_keeps_first_addressable(api, uploaded, changed):
    repo_id, first = uploaded
    new_content = FILES[changed][::-1] + b"-v2"
    second = api.upload_file(path_or_fileobj=new_content, path_in_repo=changed, repo_id=repo_id)
    assert second.oid != first and len(second.oid) == 40
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [second.oid, first]

    assert Path(hf_hub_download(repo_id, changed, revision=first)).read_bytes() == FILES[changed]
    for rev in (None, "main", second.oid):
        assert Path(hf_hub_download(repo_id, changed, revision=rev)).read_bytes() == new_content
    # Unchanged files are served identically at both commits.
    assert Path(hf_hub_download(repo_id, "sub/dir/config.json", revision=second.oid)).read_bytes()


def test_unchanged_upload_makes_no_commit(api, uploaded, tmp_path):
    repo_id, first = uploaded
    info = api.upload_folder(repo_id=repo_id, folder_path=_write_tree(tmp_path / "again", FILES))
    assert info.oid == first  # preupload reported identical oids: the client skipped the commit


def test_create_commit_with_delete(api, uploaded):
    repo_id, first = uploaded
    info = api.create_commit(
        repo_id,
        operations=[
            CommitOperationDelete("notes.txt"),
            CommitOperationDelete("sub/", is_folder=True),
            CommitOperationAdd("extra.bin", b"\x00" * 100),
        ],
        commit_message="delete and add",
    )
    assert sorted(api.list_repo_files(repo_id)) == [
        ".gitattributes",
        "extra.bin",
        "model.safetensors",
    ]
    assert sorted(api.list_repo_files(repo_id, revision=first)) == sorted(
        [".gitattributes", *FILES]
    )
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "notes.txt", revision=info.oid)


@pytest.mark.parametrize("revision", [None, "main", "first"])
def test_snapshot_download(api, uploaded, revision, tmp_path):
    repo_id, first = uploaded
    many = {f"shard-{i:02d}.safetensors": os.urandom(1000 + i) for i in range(10)}
    api.upload_folder(repo_id=repo_id, folder_path=_write_tree(tmp_path / "more", many))
    expected = {**FILES, **many} if revision != "first" else dict(FILES)

    folder = Path(snapshot_download(repo_id, revision=first if revision == "first" else revision))
    got = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".gitattributes"
    }
    assert got == expected


@pytest.mark.parametrize(
    ("call", "missing", "error"),
    [
        ("hf_hub_download", "repo", RepositoryNotFoundError),
        ("hf_hub_download", "revision", RevisionNotFoundError),
        ("hf_hub_download", "file", RemoteEntryNotFoundError),
        ("snapshot_download", "repo", RepositoryNotFoundError),
        ("snapshot_download", "revision", RevisionNotFoundError),
        ("model_info", "repo", RepositoryNotFoundError),
        ("model_info", "revision", RevisionNotFoundError),
        ("list_repo_files", "revision", RevisionNotFoundError),
    ],
)
def test_missing_things_raise_client_errors(hub_server, uploaded, call, missing, error):
    repo_id, _ = uploaded
    repo = hub_server.new_repo_id("nope") if missing == "repo" else repo_id
    revision = "no-such-branch" if missing == "revision" else None
    filename = "missing.txt" if missing == "file" else "notes.txt"
    with pytest.raises(error):
        if call == "hf_hub_download":
            hf_hub_download(repo, filename, revision=revision)
        elif call == "snapshot_download":
            snapshot_download(repo, revision=revision)
        else:
            getattr(HfApi(), call)(repo, revision=revision)


@pytest.mark.parametrize(
    ("token", "status"), [("hf_not_a_real_token", 401), (None, 401), ("read", 403)]
)
def test_upload_needs_a_write_token(hub_server, uploaded, token, status):
    repo_id, _ = uploaded
    token = hub_server.read_token if token == "read" else token
    api = HfApi(endpoint=hub_server.url, token=token or False)
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert exc_info.value.response.status_code == status
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_repo(hub_server.new_repo_id())
    assert exc_info.value.response.status_code == status


@pytest.mark.parametrize("ref", ["branch", "tag"])
def test_branch_and_tag_revisions(api, uploaded, ref):
    repo_id, first = uploaded
    if ref == "branch":
        api.create_branch(repo_id, branch="dev")
    else:
        api.create_tag(repo_id, tag="v1", revision=first)
    rev = "dev" if ref == "branch" else "v1"
    api.upload_file(path_or_fileobj=b"new", path_in_repo="notes.txt", repo_id=repo_id)
    assert api.model_info(repo_id, revision=rev).sha == first
    assert Path(hf_hub_download(repo_id, "notes.txt", revision=rev)).read_bytes() == TEXT
    assert Path(hf_hub_download(repo_id, "notes.txt")).read_bytes() == b"new"


def test_read_with_wrong_token_is_401(uploaded):
    repo_id, _ = uploaded
    for call in (
        lambda: hf_hub_download(repo_id, "notes.txt", token="hf_wrong"),
        lambda: snapshot_download(repo_id, token="hf_wrong"),
        lambda: HfApi(token="hf_wrong").model_info(repo_id),
    ):
        with pytest.raises(HfHubHTTPError) as exc_info:
            call()
        assert exc_info.value.response.status_code == 401
        assert not isinstance(exc_info.value, RepositoryNotFoundError)


def test_private_repo_needs_token(api, hub_server):
    repo_id = hub_server.new_repo_id("private")
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=TEXT, path_in_repo="notes.txt", repo_id=repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "notes.txt")
    path = hf_hub_download(repo_id, "notes.txt", token=hub_server.read_token)
    assert Path(path).read_bytes() == TEXT
    assert api.model_info(repo_id).private is True


@pytest.mark.parametrize("filename", ["notes.txt", "model.safetensors"])
def test_local_files_only_after_download(uploaded, filename, tmp_path):
    repo_id, commit = uploaded
    cache = tmp_path / "cache"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True)
    online = hf_hub_download(repo_id, filename, cache_dir=cache)
    for revision in (None, "main", commit):
        offline = hf_hub_download(
            repo_id, filename, cache_dir=cache, revision=revision, local_files_only=True
        )
        assert offline == online
        assert Path(offline).read_bytes() == FILES[filename]
    assert snapshot_download(repo_id, cache_dir=cache, local_files_only=True) == str(
        Path(online).parent
    )


def test_range_reads_and_listing_with_hf_file_system(hub_server, uploaded):
    repo_id, commit = uploaded
    fs = HfFileSystem(endpoint=hub_server.url, skip_instance_cache=True)
    with fs.open(f"{repo_id}/model.safetensors", "rb", block_size=1000) as f:
        f.seek(12_345)
        assert f.read(2_000) == WEIGHTS[12_345:14_345]  # served with HTTP Range requests
    assert fs.info(f"{repo_id}/model.safetensors")["size"] == len(WEIGHTS)
    assert sorted(fs.ls(f"{repo_id}/sub", detail=False)) == [f"{repo_id}/sub/dir"]
    assert fs.cat(f"{repo_id}@{commit}/sub/dir/config.json") == FILES["sub/dir/config.json"]


def test_concurrent_downloads(uploaded, tmp_path):
    repo_id, _ = uploaded
    results: dict[int, bytes] = {}

    def worker(i: int) -> None:
        path = hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path / f"c{i}")
        results[i] = Path(path).read_bytes()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(12), WEIGHTS)
