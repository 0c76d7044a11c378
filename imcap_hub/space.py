"""Point a Space's README.md header at the model it serves.

The header's ``models`` links the Space to the model on the Hub; ``preload_from_hub`` makes the
Space's build download the model into the Hub cache, so a cold start skips the download. Set the
Space variables ``IMCAP_MODEL`` (and ``IMCAP_REVISION``) to the same model; this command prints
them. Without ``--revision`` nothing is asked of the Hub; with it, the Hub resolves the revision
to its commit and lists the model's files there (``preload_from_hub`` pins a commit only with a
file list).

    python -m imcap_hub.space USER/MODEL [--revision REV] [--readme README.md]
    python -m imcap_hub.space --clear [--readme README.md]   # serve the bundled demo model
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.repocard import metadata_load, metadata_save
from huggingface_hub.utils import validate_repo_id

from .calibration import CALIBRATION_FILE
from .errors import ImcapError
from .model import CARD_FILE, CONFIG_FILE, DECODER_FILE, ENCODER_FILE, METRICS_FILE, VOCAB_FILE

MODEL_FILES = (
    CONFIG_FILE,
    VOCAB_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    CALIBRATION_FILE,
    METRICS_FILE,
    CARD_FILE,
)

logger = logging.getLogger(__name__)


class SpaceConfigError(ImcapError, ValueError):
    """The header cannot be written: no such README or header, a bad repo id or revision."""


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SpaceConfigError(f"{repo_id!r} is not a valid Hub repo id") from None


def preload_entry(repo_id: str, commit: str | None = None, files: list[str] | None = None) -> str:
    """One ``preload_from_hub`` item: ``repo_id`` (the whole repo, at its main branch), or
    ``repo_id file1,file2 commit`` (these files at that commit)."""
    if commit is None:
        return repo_id
    if not files:
        raise SpaceConfigError("preload_from_hub pins a commit only with a list of files")
    return f"{repo_id} {','.join(files)} {commit}"


def resolve(repo_id: str, revision: str, token: str | None = None) -> tuple[str, list[str]]:
    """The commit that ``revision`` of ``repo_id`` is at, and the imcap model files there."""
    _check_repo_id(repo_id)
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpaceConfigError(f"cannot resolve {repo_id}@{revision} on the Hub: {first}") from None
    present = {s.rfilename for s in info.siblings or []}
    if CONFIG_FILE not in present:
        raise SpaceConfigError(f"{repo_id}@{revision} has no {CONFIG_FILE}: not an imcap model")
    if info.private:
        logger.warning(
            "%s is private; Spaces do not preload private repos (the Space downloads it at "
            "start, with an HF_TOKEN secret)",
            repo_id,
        )
    return str(info.sha), [name for name in MODEL_FILES if name in present]


def set_space_model(
    readme: str | Path,
    repo_id: str | None,
    commit: str | None = None,
    files: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``models`` and ``preload_from_hub`` for ``repo_id`` into the header of ``readme``
    (``repo_id`` None: no Hub model, ``models: []`` and no preload); the rest of the file is kept.
    Returns the new header."""
    readme = Path(readme)
    try:
        header = metadata_load(readme)
    except OSError as e:
        raise SpaceConfigError(f"cannot read {readme}: {e.strerror or e}") from None
    if not header:
        raise SpaceConfigError(f"{readme} has no YAML header: is it the Space's README.md?")
    if repo_id is None:
        header["models"] = []
        header.pop("preload_from_hub", None)
    else:
        _check_repo_id(repo_id)
        header["models"] = [repo_id]
        header["preload_from_hub"] = [preload_entry(repo_id, commit, files)]
    metadata_save(readme, header)
    return header


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imcap_hub.space",
        description="Write the model a Space serves (models, preload_from_hub) into its README.md "
        "header, and print the Space variables to set.",
    )
    parser.add_argument("model", nargs="?", help="Hub repo id of the model (USER/MODEL)")
    parser.add_argument(
        "--revision", help="branch, tag or commit: preload the model's files at its commit"
    )
    parser.add_argument("--readme", default="README.md", help="the Space's README.md")
    parser.add_argument("--token", help="Hub token for --revision (default: the cached login)")
    parser.add_argument(
        "--clear", action="store_true", help="no Hub model: the Space serves the demo model"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if args.clear == bool(args.model) or (args.clear and args.revision):
        parser.error("give a model repo id, or --clear (without --revision)")
    try:
        commit, files = None, None
        if args.revision:
            commit, files = resolve(args.model, args.revision, args.token)
        header = set_space_model(args.readme, None if args.clear else args.model, commit, files)
    except ImcapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preload = header.get("preload_from_hub", [])
    print(f"{args.readme}: models: {header['models']}, preload_from_hub: {preload}")
    if args.clear:
        print("Space variables: delete IMCAP_MODEL and IMCAP_REVISION")
    else:
        print(f"Space variables: IMCAP_MODEL={args.model}")
        print(f"                 IMCAP_REVISION={commit or '(unset: the main branch)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
