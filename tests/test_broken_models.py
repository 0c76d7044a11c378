"""The broken-model corpus: every way of breaking a file of the Hub format, through
``ImageCaptioner.from_pretrained``, the CLI (``python -m imcap_hub caption``) and the app
(``python app.py --model``).

The rule: a model that really loads captions (an optional file that cannot be read is skipped with
a warning); any other breakage is refused when the model loads, not at the first caption, with one
line that names the file and the problem; never a traceback, and the app exits with status 2.
The CLI and the app run in-process (``main(argv)``: their own argument parsing, error handling
and exit status); three cases also run as real processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import random_image
from PIL import Image
from safetensors.numpy import load_file, save_file

import app
import imcap_hub.__main__ as cli
from imcap_hub import ImageCaptioner, ImcapError

ROOT = Path(__file__).resolve().parent.parent
Edit = Callable[[Path], None]


@dataclass(frozen=True)
class Break:
    """One way of breaking a model folder. ``error``: a regex the one-line refusal must match,
    or None when the model must still load and caption (``warning``: what it must say)."""

    id: str
    edit: Edit
    error: str | None
    warning: str | None = None
    base: str = "pooled"  # or "attention"


# --- edits ----------------------------------------------------------------------------------------


def write(name: str, content: bytes) -> Edit:
    return lambda d: (d / name).write_bytes(content)


def remove(name: str) -> Edit:
    return lambda d: (d / name).unlink()


def edit_json(name: str, change: Callable[[dict], object]) -> Edit:
    def edit(d: Path) -> None:
        data = json.loads((d / name).read_text())
        change(data)
        (d / name).write_text(json.dumps(data))

    return edit


def truncate(name: str, keep: float = 0.5) -> Edit:
    def edit(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return edit


def edit_tensors(name: str, change: Callable[[dict[str, np.ndarray]], object]) -> Edit:
    def edit(d: Path) -> None:
        tensors = {k: v.copy() for k, v in load_file(str(d / name)).items()}
        change(tensors)
        save_file(tensors, str(d / name))

    return edit


def first_float(tensors: dict[str, np.ndarray]) -> str:
    return sorted(k for k, v in tensors.items() if v.dtype == np.float32 and v.size > 1)[0]


def poison(value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def change(tensors: dict[str, np.ndarray]) -> None:
        tensors[first_float(tensors)].flat[0] = value

    return change


def link_out(name: str) -> Edit:
    """``name`` becomes a symlink to an intact copy of itself outside the folder."""

    def edit(d: Path) -> None:
        outside = d.parent / f"outside-{name}"
        shutil.copy(d / name, outside)
        (d / name).unlink()
        (d / name).symlink_to(outside)

    return edit


def link_in(name: str) -> Edit:
    """``name`` becomes a symlink to a copy of itself inside the folder (allowed)."""

    def edit(d: Path) -> None:
        (d / "weights").mkdir()
        (d / name).rename(d / "weights" / name)
        (d / name).symlink_to(Path("weights") / name)

    return edit


def replace_by_folder(name: str) -> Edit:
    def edit(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return edit


DECODER, ENCODER, CALIBRATION = (
    "model.safetensors",
    "encoder.safetensors",
    "calibration.safetensors",
)


def with_calibration(*edits: Edit, size: int | None = None) -> Edit:
    """A good ``calibration.safetensors`` (3 images of the encoder's size, or of ``size``)
    added to the folder, then ``edits``."""
    from imcap_hub.calibration import CalibrationSet

    def edit(d: Path) -> None:
        side = size or json.loads((d / "config.json").read_text())["encoder"]["image_size"]
        images = [random_image(seed, (side, side)) for seed in range(3)]
        CalibrationSet.from_images(images, side).save(d / CALIBRATION)
        for more in edits:
            more(d)

    return edit


CORPUS = [
    # config.json
    Break("config-missing", remove("config.json"), r"has no config\.json"),
    Break("config-empty", write("config.json", b""), r"config\.json is not valid JSON"),
    Break("config-not-json", write("config.json", b"{not json"), r"config\.json is not valid JSON"),
    Break(
        "config-not-utf8", write("config.json", b"\xff\xfe\x00{}"), r"config\.json cannot be read"
    ),
    Break(
        "config-a-list", write("config.json", b"[1, 2]"), r"config\.json must hold a JSON object"
    ),
    Break("config-a-folder", replace_by_folder("config.json"), r"config\.json"),
    Break(
        "config-version",
        edit_json("config.json", lambda c: c.update(format_version=2)),
        r"config\.json.*format_version 2",
    ),
    Break(
        "config-architecture",
        edit_json("config.json", lambda c: c["encoder"].update(architecture="vit")),
        r"config\.json.*architecture 'vit'",
    ),
    Break(
        "config-unknown-field",
        edit_json("config.json", lambda c: c["decoder"].update(layers=2)),
        r"config\.json.*layers",
    ),
    Break(
        "config-max-length-0",
        edit_json("config.json", lambda c: c["decoder"].update(max_length=0)),
        r"config\.json.*max_length",
    ),
    Break(
        "config-units-vs-weights",
        edit_json("config.json", lambda c: c["decoder"].update(units=64)),
        r"model\.safetensors tensor \S+ has shape",
    ),
    Break(
        "config-widths-vs-weights",
        edit_json("config.json", lambda c: c["encoder"].update(widths=[8, 32])),
        r"model\.safetensors tensor init_h/kernel has shape .*the encoder gives 32 channels",
    ),
    Break(
        "config-vocab-size",
        edit_json("config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 1)),
        r"model\.safetensors tensor embedding/embeddings .*config\.json says vocab_size=18",
    ),
    Break(
        "config-key-named-like-an-argument",
        edit_json("config.json", lambda c: c.update(card="x")),
        r"config\.json: unknown key 'card'",
    ),
    Break(
        "config-image-size-not-a-number",
        edit_json("config.json", lambda c: c["encoder"].update(image_size="big")),
        r"config\.json: .*image_size",
    ),
    # vocab.json
    Break("vocab-missing", remove("vocab.json"), r"has no vocab\.json"),
    Break(
        "vocab-not-json", write("vocab.json", b"tokens: [a, b]"), r"vocab\.json is not valid JSON"
    ),
    Break("vocab-not-utf8", write("vocab.json", b'{"tokens": ["\xff"]}'), r"vocab\.json"),
    Break(
        "vocab-no-specials",
        edit_json("vocab.json", lambda v: v.update(tokens=v["tokens"][4:])),
        r"vocab\.json.*(start with|special)",
    ),
    Break(
        "vocab-duplicates",
        edit_json("vocab.json", lambda v: v["tokens"].__setitem__(-1, v["tokens"][-2])),
        r"vocab\.json.*duplicate",
    ),
    # model.safetensors (the decoder)
    Break("decoder-missing", remove(DECODER), r"has no model\.safetensors"),
    Break("decoder-empty", write(DECODER, b""), r"cannot read model\.safetensors"),
    Break("decoder-truncated", truncate(DECODER), r"cannot read model\.safetensors"),
    Break("decoder-text", write(DECODER, b"not safetensors\n"), r"cannot read model\.safetensors"),
    Break(
        "decoder-extra-tensor",
        edit_tensors(DECODER, lambda t: t.update(extra=np.zeros(3, np.float32))),
        r"model\.safetensors has unexpected tensor\(s\) extra",
    ),
    Break(
        "decoder-missing-tensor",
        edit_tensors(DECODER, lambda t: t.pop("lstm/bias")),
        r"model\.safetensors lacks tensor\(s\) lstm/bias",
    ),
    Break(
        "decoder-nan",
        edit_tensors(DECODER, poison(np.nan)),
        r"model\.safetensors tensor \S+ holds NaN",
    ),
    Break(
        "decoder-inf",
        edit_tensors(DECODER, poison(np.inf)),
        r"model\.safetensors tensor \S+ holds NaN or infinite",
    ),
    Break("decoder-link-out", link_out(DECODER), r"model\.safetensors is a link to .*outside"),
    # encoder.safetensors
    Break("encoder-missing", remove(ENCODER), r"has no encoder\.safetensors"),
    Break("encoder-truncated", truncate(ENCODER), r"cannot read encoder\.safetensors"),
    Break("encoder-empty", write(ENCODER, b""), r"cannot read encoder\.safetensors"),
    Break(
        "encoder-extra-tensor",
        edit_tensors(ENCODER, lambda t: t.update(extra=np.zeros(3, np.float32))),
        r"encoder\.safetensors does not match the encoder config: 0 missing .* 1 unexpected",
    ),
    Break(
        "encoder-missing-tensor",
        edit_tensors(ENCODER, lambda t: t.pop(first_float(t))),
        r"encoder\.safetensors does not match the encoder config: 1 missing",
    ),
    Break(
        "encoder-wrong-shape",
        edit_tensors(ENCODER, lambda t: t.update({first_float(t): np.zeros(3, np.float32)})),
        r"encoder\.safetensors: tensor \S+ has shape",
    ),
    Break(
        "encoder-nan",
        edit_tensors(ENCODER, poison(np.nan)),
        r"encoder\.safetensors: tensor \S+ holds NaN",
    ),
    Break(
        "encoder-inf",
        edit_tensors(ENCODER, poison(-np.inf)),
        r"encoder\.safetensors: tensor \S+ holds NaN or infinite",
    ),
    Break("encoder-link-out", link_out(ENCODER), r"encoder\.safetensors is a link to .*outside"),
    # calibration.safetensors (optional: the int8 encoder's calibration images; checked at load)
    Break("calibration-empty", write(CALIBRATION, b""), r"cannot read calibration\.safetensors"),
    Break(
        "calibration-text",
        write(CALIBRATION, b"not safetensors\n"),
        r"cannot read calibration\.safetensors",
    ),
    Break(
        "calibration-truncated",
        with_calibration(truncate(CALIBRATION)),
        r"cannot read calibration\.safetensors",
    ),
    Break(
        "calibration-wrong-tensors",
        with_calibration(edit_tensors(CALIBRATION, lambda t: t.update(extra=t["offsets"]))),
        r"calibration\.safetensors must hold the tensors jpeg and offsets, not extra, jpeg, off",
    ),
    Break(
        "calibration-offsets-past-the-end",
        with_calibration(
            edit_tensors(CALIBRATION, lambda t: t["offsets"].__setitem__(-1, t["offsets"][-1] + 9))
        ),
        r"calibration\.safetensors: offsets must rise from 0 to the length of jpeg",
    ),
    Break(
        "calibration-not-an-image",
        with_calibration(
            edit_tensors(CALIBRATION, lambda t: t["jpeg"].__setitem__(slice(0, 64), 7))
        ),
        r"calibration\.safetensors: calibration image 0: .*(not an image|cannot|damaged|format)",
    ),
    Break(
        "calibration-another-size",
        with_calibration(size=40),
        r"calibration\.safetensors: calibration image 0 is 40x40; the encoder reads 32x32",
    ),
    Break(
        "calibration-link-out",
        with_calibration(link_out(CALIBRATION)),
        r"calibration\.safetensors is a link to .*outside",
    ),
    # the attention decoder's own tensors
    Break(
        "attention-missing-tensor",
        edit_tensors(DECODER, lambda t: t.pop("att/w")),
        r"model\.safetensors lacks tensor\(s\) att/w",
        base="attention",
    ),
    Break(
        "attention-nan",
        edit_tensors(DECODER, lambda t: t["att/W_a"].__setitem__((0, 0), np.nan)),
        r"model\.safetensors tensor att/W_a holds NaN",
        base="attention",
    ),
    Break(
        "attention-on-pooled-features",
        edit_json("config.json", lambda c: c["encoder"].update(features="pooled")),
        r"config\.json.*(attention|spatial)",
        base="attention",
    ),
    # folders that must still load
    Break(
        "metrics-not-json",
        write("metrics.json", b"{broken"),
        None,
        warning="ignoring metrics.json, which cannot be read",
    ),
    Break(
        "metrics-not-utf8",
        write("metrics.json", b"\xff\xfe not utf-8"),
        None,
        warning="ignoring metrics.json, which cannot be read",
    ),
    Break(
        "card-not-utf8",
        write("README.md", b"\xff\xfe not utf-8"),
        None,
        warning="ignoring README.md, which cannot be read",
    ),
    Break("card-bad-yaml", write("README.md", b"---\n: [unclosed\n---\nbody\n"), None),
    Break("decoder-link-in", link_in(DECODER), None),
    Break("encoder-link-in", link_in(ENCODER), None),
    Break("calibration-good", with_calibration(), None),
    Break("calibration-link-in", with_calibration(link_in(CALIBRATION)), None),
]
FAILING = [b for b in CORPUS if b.error]


@pytest.fixture(scope="module")
def bases(app_model_dir, attention_model_dir) -> dict[str, Path]:
    return {"pooled": app_model_dir, "attention": attention_model_dir}


@pytest.fixture
def broken(request, bases, tmp_path) -> tuple[Break, Path]:
    case: Break = request.param
    folder = tmp_path / "model"
    shutil.copytree(bases[case.base], folder)
    (folder / "metrics.json").write_text('{"decodings": {"beam-3": {"BLEU-4": 0.1}}}')
    case.edit(folder)
    return case, folder


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus-image") / "shapes.png"
    Image.fromarray(random_image(5, (40, 40))).save(path)
    return path


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of ``stderr`` (and no traceback)."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def corpus(cases: list[Break]):
    return pytest.mark.parametrize("broken", cases, ids=[c.id for c in cases], indirect=True)


def test_the_corpus_is_wide():
    assert len(FAILING) >= 20 and len({c.id for c in CORPUS}) == len(CORPUS)


@corpus(CORPUS)
def test_from_pretrained(broken, image, caplog):
    case, folder = broken
    if case.error is None:
        with caplog.at_level("WARNING", logger="imcap_hub"):
            model = ImageCaptioner.from_pretrained(folder)
        assert model.caption(image)[0].text
        if case.warning:
            assert case.warning in caplog.text
        return
    with pytest.raises(ImcapError, match=case.error) as info:
        ImageCaptioner.from_pretrained(folder)  # at load: no caption is asked for
    assert "\n" not in str(info.value)


@corpus(CORPUS)
def test_cli(broken, image, capsys):
    case, folder = broken
    status = cli.main(["caption", str(image), "--model", str(folder)])
    out, err = capsys.readouterr()
    if case.error is None:
        assert status == 0 and out.startswith(f"{image}\t") and out.split("\t")[1].strip()
        assert "Traceback" not in err
        return
    assert status == 2 and not out
    assert re.search(case.error, one_error_line(err))


@corpus(CORPUS)
def test_app(broken, capsys, monkeypatch):
    case, folder = broken
    launched = []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda self, **kw: launched.append(self))
    status = app.main(["--model", str(folder)])
    _, err = capsys.readouterr()
    if case.error is None:
        assert status == 0 and len(launched) == 1
        service = launched[0].imcap_service
        assert not service.loaded.is_demo and service.loaded.notice is None
        return
    assert status == 2 and not launched
    line = one_error_line(err)
    assert re.search(case.error, line) and str(folder) in line


@pytest.mark.parametrize(
    ("command", "case"),
    [
        (["app.py", "--model"], "encoder-truncated"),
        (["app.py", "--model"], "decoder-nan"),
        (["-m", "imcap_hub", "caption", "IMAGE", "--model"], "encoder-nan"),
    ],
)
def test_as_a_process(bases, image, tmp_path, command, case):
    """The same through a real process: exit status 2, one error line, no traceback."""
    (spec,) = [c for c in CORPUS if c.id == case]
    folder = tmp_path / "model"
    shutil.copytree(bases[spec.base], folder)
    spec.edit(folder)
    args = [str(image) if a == "IMAGE" else a for a in command]
    env = {**os.environ, "GRADIO_SERVER_PORT": "1"}  # never reached: the load fails first
    result = subprocess.run(
        [sys.executable, *args, str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert re.search(spec.error, one_error_line(result.stderr))
