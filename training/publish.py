"""Publish a trained captioner: the model folder (save_pretrained + model card + metrics.json) and,
with a repo id, the same files pushed to the Hugging Face Hub in one commit.

Hub failures become :class:`PublishError` with a one-line reason (a refused token, no write access,
an unknown branch, no network) instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from imcap_hub import DecodeOptions, ImageError, ImcapError, load_image
from imcap_hub.calibration import CALIBRATION_FILE, CalibrationSet
from imcap_hub.model import ENCODER_FILE, METRICS_FILE
from model_card import REPO_PLACEHOLDER, render_card
from training.evaluate import best_decoding

if TYPE_CHECKING:
    import pandas as pd

    from imcap_hub import ImageCaptioner
    from training.record import TrainRecord

try:  # the HTTP client huggingface_hub uses: its connection errors are not HfHubHTTPError
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - older huggingface_hub
    try:
        from httpx import TransportError as _TransportError
    except ImportError:
        _TransportError = ConnectionError  # type: ignore[assignment,misc]


class PublishError(ImcapError, RuntimeError):
    """The model could not be written or pushed; the message says why in one line."""


@dataclass
class PublishResult:
    """Where the model went: the local folder, and the Hub repo and commit when pushed."""

    out_dir: Path
    repo_id: str | None = None
    commit_hash: str | None = None
    commit_url: str | None = None
    files: list[str] = field(default_factory=list)

    @property
    def repo_url(self) -> str | None:
        if self.repo_id is None:
            return None
        from huggingface_hub import constants

        return f"{constants.ENDPOINT.rstrip('/')}/{self.repo_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": os.fspath(self.out_dir),
            "repo_id": self.repo_id,
            "commit_hash": self.commit_hash,
            "commit_url": self.commit_url,
            "files": list(self.files),
        }


def _hub_error(error: Exception, repo_id: str, branch: str | None) -> PublishError:
    """A one-line message for a failed push."""
    if isinstance(error, HFValidationError):
        return PublishError(f"{repo_id!r} is not a valid Hub repo id (expected 'namespace/name')")
    if isinstance(error, OfflineModeIsEnabled):
        return PublishError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set")
    if isinstance(error, RevisionNotFoundError):
        return PublishError(f"{repo_id} has no branch {branch!r}")
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return PublishError(
            f"the Hub refused the token while pushing to {repo_id} (401 Unauthorized): pass a "
            "valid write token (--token or HF_TOKEN) or log in with `hf auth login`"
        )
    if status == 403:
        return PublishError(
            f"the token may not write to {repo_id} (403 Forbidden): use a token with write "
            "access to that namespace"
        )
    if isinstance(error, RepositoryNotFoundError) or status == 404:
        return PublishError(f"{repo_id} not found on the Hub, or the token cannot see it (404)")
    if isinstance(error, HfHubHTTPError):
        detail = getattr(error, "server_message", None) or str(error)
        first = detail.strip().splitlines()[0] if detail.strip() else "no message"
        return PublishError(f"pushing to {repo_id} failed ({status or 'HTTP error'}): {first}")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PublishError(f"cannot reach the Hub to push {repo_id}: {first}")


def _check_card(card: str, repo_id: str) -> None:
    """A card about to be pushed names its repo in the usage snippet and keeps no placeholder."""
    if REPO_PLACEHOLDER in card or f'from_pretrained("{repo_id}")' not in card:
        raise PublishError(
            f"the model card does not name {repo_id} in its usage snippet (template bug?)"
        )


def _remove_stale(out_dir: Path, model: ImageCaptioner) -> list[str]:
    """Files a previous save into ``out_dir`` may have left that this model does not write."""
    stale = []
    if model.metrics is None:
        stale.append(METRICS_FILE)
    if model.config.encoder.weights != "repo":
        stale.append(ENCODER_FILE)
    if model.encoder.calibration is None:
        stale.append(CALIBRATION_FILE)
    for name in stale:
        (out_dir / name).unlink(missing_ok=True)
    return stale


def calibration_set(
    table: pd.DataFrame, image_size: int, count: int, seed: int
) -> CalibrationSet | None:
    """``count`` images of the training split (``table``: image, caption, split), drawn at random
    with ``seed``, for ``calibration.safetensors``: what the int8 encoder calibrates on. An image
    that cannot be read is passed over for the next one. None when ``count`` is 0."""
    if count == 0:
        return None
    images = list(dict.fromkeys(table.loc[table["split"] == "train", "image"].tolist()))
    picked = []
    for i in np.random.default_rng(seed).permutation(len(images)):
        try:
            picked.append(load_image(images[i]))
        except ImageError:
            continue
        if len(picked) == count:
            break
    if not picked:
        raise PublishError(f"no training image can be read for {CALIBRATION_FILE}")
    return CalibrationSet.from_images(picked, image_size)


def publish(
    model: ImageCaptioner,
    out_dir: str | os.PathLike,
    *,
    metrics: dict | None,
    record: TrainRecord,
    model_name: str | None = None,
    notes: str | None = None,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    branch: str | None = None,
    commit_message: str | None = None,
    space_url: str | None = None,
) -> PublishResult:
    """Write ``model`` with its model card and metrics to ``out_dir``; push it when ``repo_id``.

    ``metrics``: the evaluation (None: not evaluated); ``record``: the run's training record;
    ``model_name``: the card's title when there is no repo id (default: the run's name);
    ``notes``: a paragraph the card shows under its summary.
    Sets ``model.card`` (rendered by :func:`model_card.render_card`; with ``repo_id``, its usage
    snippet names that repo: a pushed card never keeps the placeholder) and ``model.metrics``, then
    ``model.save_pretrained(out_dir)``. With ``repo_id``: creates the repo (``private`` applies to
    a new repo only) and ``branch`` if missing, and pushes the same files in one commit; imcap
    files that this model does not have (an old ``metrics.json``, ``encoder.safetensors``,
    ``calibration.safetensors``) are deleted from the repo in that commit. Raises
    :class:`PublishError` with a one-line reason.
    """
    out_dir = Path(out_dir)
    if repo_id is not None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise _hub_error(e, repo_id, branch) from None
        if "/" not in repo_id:
            raise PublishError(
                f"{repo_id!r}: give the full repo id, 'namespace/name' (your user or organisation)"
            )

    card = render_card(
        model.config,
        metrics,
        record,
        repo_id=repo_id,
        space_url=space_url,
        model_name=model_name,
        notes=notes,
        calibration_images=len(model.encoder.calibration or ()),
    )
    if repo_id is not None:
        _check_card(card, repo_id)
    model.card = card
    model.metrics = metrics
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stale = _remove_stale(out_dir, model)
        model.save_pretrained(out_dir)
    except OSError as e:
        raise PublishError(f"cannot write the model to {out_dir}: {e}") from None
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    result = PublishResult(out_dir=out_dir, files=files)
    if repo_id is None:
        return result

    message = commit_message or _default_commit_message(model, metrics, record)
    try:
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if branch is not None:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = model.push_to_hub(
            repo_id,
            token=token,
            private=private,
            branch=branch,
            commit_message=message,
            delete_patterns=stale or None,
        )
    except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, _TransportError) as e:
        raise _hub_error(e, repo_id, branch) from None
    except OSError as e:  # e.g. DNS failure or a connection refused below the HTTP client
        raise _hub_error(e, repo_id, branch) from None
    result.repo_id = repo_id
    result.commit_hash = getattr(commit, "oid", None)
    result.commit_url = getattr(commit, "commit_url", None) or str(commit)
    return result


def _default_commit_message(
    model: ImageCaptioner, metrics: dict | None, record: TrainRecord
) -> str:
    """What was pushed, and the best decoding's scores (the one the card's summary names)."""
    text = f"imcap {model.config.encoder.architecture} + LSTM captioner"
    text += f" trained on {record.dataset.name}"
    best = best_decoding(metrics)
    if best is not None:
        label, scores = best
        label = DecodeOptions.from_label(label).label
        text += (
            f" (BLEU-4 {scores['BLEU-4']:.4f}, CIDEr {scores['CIDEr']:.4f}, {label}, "
            f"{metrics['split']} split)"
        )
    return text
