"""The bad-input corpus (tests/bad_inputs.py) through every entry point: the Python API, the CLI
and the app's API. The rule for every case: a caption (non-empty text) for anything that really
is an image; otherwise ONE line that names the input and the problem; never a traceback, never a
dead server, and never an empty caption with exit status 0.

Files go through one CLI process (TensorFlow's import is slow), options through the CLI's
``main`` in-process; arrays, PIL images and other objects only exist in Python."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs import APP, CASES, CLI, PYTHON, Case, cases
from gradio_client import handle_file
from gradio_client.exceptions import ValidationError
from test_cli import run_cli

from imcap_hub import ImageCaptioner, ImcapError, load_image
from imcap_hub.__main__ import main as cli_main


def _params(via: str, kinds: tuple[str, ...] | None = None) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases(via, kinds)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def files(corpus_dir) -> dict[str, Any]:
    """Every file case's path, and the options cases' good image, written once."""
    return {c.id: c.make(corpus_dir) for c in CASES if c.kind in ("file", "options")}


def _source(case: Case, files: dict[str, Any], corpus_dir: Path) -> Any:
    return files[case.id] if case.id in files else case.make(corpus_dir)


def _shown(path: Any) -> str:
    """A path as a message must show it: quoted, control characters escaped (one line)."""
    text = os.fspath(path)
    return f"'{text}'" if text.isprintable() else repr(text)


def _names(case: Case, source: Any) -> str | None:
    """A regex for how a refusal names ``source`` (None: ``case.problem`` names it)."""
    if case.names or case.kind == "options":
        return case.names
    if isinstance(source, (str, os.PathLike)):
        return re.escape(_shown(source))
    if case.kind == "array":
        return re.escape(f"array of shape {np.shape(source)}")
    if case.kind == "pil":
        return re.escape(f"{source.mode} PIL image") + r" of \d+x\d+ pixels"
    return None


def _check_refusal(case: Case, message: str, names: str | None) -> None:
    assert message.strip(), f"{case.id}: an empty message"
    assert "\n" not in message and "\r" not in message, f"{case.id}: not one line: {message!r}"
    assert "Traceback" not in message, message
    assert re.search(case.problem, message), f"{case.id}: the problem is not named: {message!r}"
    if names is not None:
        assert re.search(names, message), f"{case.id}: the input is not named: {message!r}"
        # "<the input>: <the problem>", the input quoted or not
        assert re.search(f"(?:{names})'?(?:{case.problem})", message), message


def _captions_expected(case: Case) -> int:
    return int(case.options.get("num_captions", 1))


# --- the Python API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioner(app_model_dir) -> ImageCaptioner:
    return ImageCaptioner.from_pretrained(app_model_dir)


@pytest.mark.parametrize("case", _params(PYTHON))
def test_python_api(case, captioner, files, corpus_dir):
    source = _source(case, files, corpus_dir)
    if case.is_image:
        captions = captioner.caption(source, **case.options)
        assert len(captions) == _captions_expected(case)
        assert all(c.text.strip() for c in captions), [c.text for c in captions]
        if case.pixel is not None:
            top_left = load_image(_source(case, files, corpus_dir))[0, 0].astype(int)
            assert np.abs(top_left - case.pixel).max() <= 2, (tuple(top_left), case.pixel)
        return
    with pytest.raises(ImcapError) as caught:  # any other exception is a user's traceback
        captioner.caption(source, **case.options)
    _check_refusal(case, str(caught.value), _names(case, source))


# --- the CLI -------------------------------------------------------------------------------------

CLI_FILES = cases(CLI, ("file",))


@pytest.fixture(scope="module")
def cli_files(files, app_model_dir):
    """One ``python -m imcap_hub caption`` of every file case, in one process."""
    return run_cli(*(files[c.id] for c in CLI_FILES), "--model", app_model_dir)


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse: a value that is not a number, an unknown option
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", _params(CLI))
def test_cli(case, cli_files, files, app_model_dir, capsys):
    if case.kind == "file":
        path, result = os.fspath(files[case.id]), cli_files
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.returncode == 1  # some files are not images
        captioned = [line for line in result.stdout.splitlines() if line.startswith(f"{path}\t")]
        errors = [
            line.removeprefix("error: ")
            for line in result.stderr.splitlines()
            if line.startswith("error: ")
        ]
        names = _names(case, path)
        mine = [line for line in errors if re.search(names, line)]
        if case.is_image:
            assert len(captioned) == 1 and not mine, (captioned, mine)
            assert captioned[0].removeprefix(f"{path}\t").strip()
        else:
            assert len(mine) == 1 and not captioned, (mine, captioned)
            _check_refusal(case, mine[0], names)
        return
    image = os.fspath(files[case.id])
    code, out, err = _run_main(
        ["caption", image, "--model", os.fspath(app_model_dir), *case.cli], capsys
    )
    assert "Traceback" not in err
    if case.is_image:
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == _captions_expected(case), out
        assert all(line.startswith(f"{image}\t") and line.split("\t")[-1].strip() for line in lines)
        return
    assert code == 2 and not out, (code, out)
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1, err
    _check_refusal(case, errors[0], None)


def test_cli_says_one_error_line_per_bad_file(cli_files):
    errors = [line for line in cli_files.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == sum(not c.is_image for c in CLI_FILES), errors
    assert len(cli_files.stdout.splitlines()) == sum(c.is_image for c in CLI_FILES)


# --- the app's API -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(app_server):
    return app_server.client()


def _caption_text(endpoint: str, answer: Any) -> str:
    return answer if endpoint == "/caption" else answer["caption"]


def _server_message(error: Exception) -> str:
    """What the server said: gradio_client lists a validator's messages under a heading of its
    own ("1 parameter(s) failed validation:\n- image: ...")."""
    if isinstance(error, ValidationError):
        found = re.fullmatch(
            r"1 parameter\(s\) failed validation:\n- image: (.*)", str(error), re.S
        )
        assert found, str(error)
        return found.group(1)
    return str(error)


@pytest.mark.parametrize("case", _params(APP))
def test_app(case, client, files, corpus_dir):
    # A refusal: gradio_client raises AppError (gr.Error) or ValidationError (the validator),
    # both ValueErrors; a dead server would be a connection error.
    if case.kind == "options":
        image = handle_file(files[case.id])
        if case.is_image:
            details = client.predict(image, **case.app, api_name="/caption_details")
            assert len(details["captions"]) == _captions_expected(case)
            assert details["caption"].strip() and all(
                c["text"].strip() for c in details["captions"]
            )
            return
        with pytest.raises(ValueError, match="Bad option") as caught:
            client.predict(image, **case.app, api_name="/caption_details")
        _check_refusal(case, str(caught.value), None)
        return
    if case.kind == "file":
        name = Path(files[case.id]).name
        image, names = handle_file(files[case.id]), case.names or re.escape(name)
    else:  # what a client may send instead of a file (nothing)
        image, names = case.make(corpus_dir), case.names
    for endpoint in ("/caption", "/caption_details"):
        if case.is_image:
            answer = client.predict(image, api_name=endpoint)
            assert _caption_text(endpoint, answer).strip(), (endpoint, answer)
            continue
        with pytest.raises(ValueError) as caught:
            client.predict(image, api_name=endpoint)
        message = _server_message(caught.value)
        _check_refusal(case, message, names)
        assert not re.search(r"gradio/[0-9a-f]{16,}/", message), message  # not the server's path


def test_app_still_serves_after_the_corpus(client, captioner, files):
    good = files["png"]
    expected = captioner.caption(good)[0].text
    assert expected and client.predict(handle_file(good), api_name="/caption") == expected
