"""ImageCaptioner: a ResNet50 encoder and an LSTM decoder, saved to and loaded from the Hub."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from huggingface_hub import ModelHubMixin, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .calibration import CALIBRATION_FILE, CalibrationError, CalibrationSet
from .config import CaptionerConfig
from .decoder import load_weights, make_step_decoder, random_weights, save_weights
from .encoder import Encoder, build_keras_encoder, keras_weights
from .errors import ImcapError
from .images import ImageInput
from .startup import step

if TYPE_CHECKING:
    from .inference import Caption
from .files import atomic_write, atomic_write_json, save_tensors
from .vocab import Vocabulary

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
DECODER_FILE = "model.safetensors"
ENCODER_FILE = "encoder.safetensors"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
REPO_PLACEHOLDER = "USER/MODEL"  # a card rendered before its repo is known names this

DEFAULT_CARD = """---
{{ card_data }}
---

# Image captioner ({{ architecture }} + LSTM)

An image-captioning model made with [imcap]({{ repo_url }}): a {{ architecture }} encoder and an
LSTM decoder. It has not been evaluated; see `metrics.json` if present.

Install the imcap library (the `imcap_hub` package), then caption an image:

```bash
pip install "imcap @ git+{{ repo_url }}"
```

```python
from imcap_hub import ImageCaptioner

model = ImageCaptioner.from_pretrained("{{ repo_id | default('USER/MODEL', true) }}")
print(model.caption("image.jpg")[0].text)
```
"""


class ModelLoadError(ImcapError, RuntimeError):
    """A model could not be found, downloaded or read.

    ``reason``: ``offline`` (the Hub cannot be reached and the files are not cached),
    ``not_found``, ``revision``, ``unauthorized``, ``gated``, ``invalid`` or ``other``.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def _read_optional(path: str | None, name: str, json_file: bool) -> Any:
    """An optional file of the format (the card, metrics.json): its text or JSON, or None with
    a warning when it cannot be read (the model still loads)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if json_file else text
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.warning("ignoring %s, which cannot be read: %s", name, e)
        return None


def _refuse_links_out(folder: str, path: str) -> None:
    """Refuse a file of a model folder that is a link to somewhere outside it: a model folder
    must not make the loader read other files. Links into the folder are fine, and so are the
    links of a Hugging Face cache snapshot (``snapshots/<commit>/``) into its repo's ``blobs/``."""
    root = os.path.realpath(folder)
    allowed = [root]
    snapshots = os.path.dirname(root)
    if os.path.basename(snapshots) == "snapshots":
        allowed.append(os.path.join(os.path.dirname(snapshots), "blobs"))
    target = os.path.realpath(path)
    if not any(os.path.commonpath([target, inside]) == inside for inside in allowed):
        raise ModelLoadError(
            f"{path} is a link to {target}, outside the model folder; refused (copy the file "
            "into the folder instead)"
        )


def _where(name: str, revision: str | None) -> str:
    """Where a model loads from, for the log line before loading it."""
    if os.path.isdir(name):
        return f"folder {name}"
    at = f", revision {revision}" if revision else ""
    return f"{name}{at}, from the Hub or its local cache"


def _commit_from_path(path: str) -> str | None:
    match = re.search(r"snapshots[\\/]([0-9a-f]{40})[\\/]", path)
    return match.group(1) if match else None


def _load_error(error: Exception, model_id: str, revision: str | None) -> ModelLoadError:
    """A one-line message for a Hub download failure."""
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return ModelLoadError(
            f"{model_id} is not in the local cache and the Hub cannot be reached "
            "(offline, or local_files_only=True)",
            "offline",
        )
    if isinstance(error, RevisionNotFoundError):
        return ModelLoadError(f"{model_id} has no revision {revision!r}", "revision")
    if isinstance(error, GatedRepoError):
        return ModelLoadError(
            f"{model_id} is gated: accept its terms on the Hub and pass a token", "gated"
        )
    if isinstance(error, RepositoryNotFoundError):
        return ModelLoadError(
            f"model {model_id!r} not found on the Hub (or it is private and no valid token was given)",
            "not_found",
        )
    response = getattr(error, "response", None)
    if response is not None and response.status_code == 401:
        return ModelLoadError(
            f"the Hub refused the token for {model_id} (401 Unauthorized)", "unauthorized"
        )
    return ModelLoadError(f"could not download {model_id}: {error}", "other")


class ImageCaptioner(
    ModelHubMixin,
    library_name="imcap",
    pipeline_tag="image-to-text",
    tags=["image-captioning", "keras", "lstm", "resnet50"],
    repo_url="https://github.com/imcap/imcap",
    model_card_template=DEFAULT_CARD,
):
    """An image captioner. Build one with ``from_pretrained`` (Hub or folder) or ``from_config``."""

    def __init__(
        self,
        model_config: CaptionerConfig,
        vocab: Vocabulary,
        decoder_weights: Mapping[str, np.ndarray],
        image_encoder: Encoder,
        *,
        card: str | None = None,
        metrics: dict | None = None,
        source: dict | None = None,
    ) -> None:
        model_config.validate()
        if len(vocab) != model_config.vocab_size:
            raise ModelLoadError(
                f"vocab.json has {len(vocab)} tokens but config.json says vocab_size={model_config.vocab_size}"
            )
        self.config = model_config
        self.vocab = vocab
        self.decoder = make_step_decoder(decoder_weights, model_config)
        self.encoder = image_encoder
        self.card = card
        self.metrics = metrics
        self.source = source or {"kind": "memory", "model_id": None, "revision": None}

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        model_config: CaptionerConfig,
        vocab: Vocabulary,
        *,
        seed: int = 0,
        runtime: str = "auto",
        encoder_weights: str | os.PathLike | None = None,
        encoder_model=None,
    ) -> ImageCaptioner:
        """An untrained captioner: freshly initialised decoder, encoder per ``model_config.encoder``.

        ``encoder_model``: an already built Keras encoder to use (training passes its own).
        """
        model_config.validate()
        if (
            encoder_model is None
            and encoder_weights is None
            and model_config.encoder.weights == "repo"
        ):
            # Untrained: random init now; training fills it and save_pretrained writes it.
            encoder_model = build_keras_encoder(
                replace(model_config.encoder, weights="random"), seed=seed
            )
        encoder = Encoder(
            model_config.encoder,
            weights_file=encoder_weights,
            keras_model=encoder_model,
            runtime=runtime,
        )
        return cls(model_config, vocab, random_weights(model_config, seed=seed), encoder)

    @property
    def decoder_weights(self) -> Mapping[str, np.ndarray]:
        """The decoder's weights as published in model.safetensors (one copy: the decoder's)."""
        return self.decoder.weights

    def set_decoder_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the decoder's weights (checked against the config)."""
        self.decoder = make_step_decoder(weights, self.config)

    # --- inference ----------------------------------------------------------------------------

    def caption(self, image: ImageInput, **options: Any) -> list[Caption]:
        """Caption one image; options as ``DecodeOptions`` (beam_size=3, num_captions=1, ...).

        A misspelt or wrong option raises ``OptionsError`` naming it; a bad image ``ImageError``.
        """
        from .inference import DecodeOptions, predict

        return predict(self, image, DecodeOptions.from_kwargs(**options)).captions

    def info(self) -> dict[str, Any]:
        """What this model is and where it came from (for the app, the API and the CLI)."""
        runtime = self.encoder.runtime.to_dict() if self.encoder.runtime else None
        return {
            **self.source,
            "runtime": runtime,
            "config": self.config.to_dict(),
            "metrics": self.metrics,
        }

    # --- saving -------------------------------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        save_directory = Path(save_directory)
        self.config.save(save_directory / CONFIG_FILE)
        self.vocab.save(save_directory / VOCAB_FILE)
        save_weights(self.decoder_weights, save_directory / DECODER_FILE, self.config)
        if self.config.encoder.weights == "repo":
            save_tensors(
                keras_weights(self.encoder.keras_model),
                save_directory / ENCODER_FILE,
                "imcap-encoder/1",
            )
        if self.encoder.calibration is not None:
            self.encoder.calibration.save(save_directory / CALIBRATION_FILE)
        if self.metrics is not None:
            atomic_write_json(save_directory / METRICS_FILE, self.metrics)
        if self.card is not None:
            atomic_write(save_directory / CARD_FILE, self.card)

    def push_to_hub(
        self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """The mixin's push (same arguments), with a card that names ``repo_id``: huggingface_hub
        2.4 passes no repo id to the card, and a card rendered for a folder names USER/MODEL."""
        kept = self.card
        if kept is not None:
            self.card = kept.replace(REPO_PLACEHOLDER, repo_id)
        try:
            card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
            return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)
        finally:
            self.card = kept

    def generate_model_card(self, *args, **kwargs):
        kwargs.setdefault("architecture", self.config.encoder.architecture)
        return super().generate_model_card(*args, **kwargs)

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        runtime: str = "auto",
        encoder_weights: str | os.PathLike | None = None,
    ) -> ImageCaptioner:
        """Load from a Hub repo id or a local folder.

        ``revision``: a branch, tag or commit hash. ``runtime``: the encoder's (``RUNTIMES`` in
        ``imcap_hub.encoder``: ``auto`` takes the fastest exact one, ``fast`` the fastest
        approximate one that works here, ``openvino-int8`` needs the model's
        ``calibration.safetensors``). ``encoder_weights``: a local ResNet50 ``.h5`` instead of
        Keras' ImageNet download.
        """
        # Not the mixin's from_pretrained: it reads config.json as __init__ keyword arguments,
        # before any check (a list, or a key named like an argument, gave a traceback), while
        # _from_pretrained reads and checks config.json itself, as imcap's format.
        name = str(pretrained_model_name_or_path)
        try:
            with step(logger, "loading the model", _where(name, revision)):
                return cls._from_pretrained(
                    model_id=name,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    runtime=runtime,
                    encoder_weights=encoder_weights,
                )
        except HFValidationError:
            raise ModelLoadError(
                f"{name!r} is neither a model folder nor a valid Hub repo id"
            ) from None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        runtime: str = "auto",
        encoder_weights: str | os.PathLike | None = None,
    ) -> ImageCaptioner:
        is_dir = os.path.isdir(model_id)

        def fetch(filename: str, required: bool = True) -> str | None:
            if is_dir:
                path = os.path.join(model_id, filename)
                if os.path.exists(path):
                    _refuse_links_out(model_id, path)
                    return path
                if required:
                    raise ModelLoadError(
                        f"{model_id} has no {filename}; is it an imcap model folder?"
                    )
                return None
            try:
                return hf_hub_download(
                    repo_id=model_id,
                    filename=filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    local_files_only=local_files_only,
                    token=token,
                )
            except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
                # Before EntryNotFoundError, which LocalEntryNotFoundError subclasses.
                if required:
                    raise _load_error(e, model_id, revision) from None
                return None
            except EntryNotFoundError:
                if required:
                    raise ModelLoadError(
                        f"{model_id} has no {filename}; is it an imcap model?"
                    ) from None
                return None
            except HfHubHTTPError as e:
                raise _load_error(e, model_id, revision) from None

        config_path = fetch(CONFIG_FILE)
        model_config = CaptionerConfig.load(config_path)
        vocab = Vocabulary.load(fetch(VOCAB_FILE))
        weights = load_weights(fetch(DECODER_FILE), model_config)
        if model_config.encoder.weights == "repo":
            encoder_weights = fetch(ENCODER_FILE)
        calibration = None
        calibration_path = fetch(CALIBRATION_FILE, required=False)
        if calibration_path is not None:  # optional, but checked now like every file of a model
            try:
                calibration = CalibrationSet.load(calibration_path, model_config.encoder.image_size)
            except CalibrationError as e:
                raise ModelLoadError(str(e)) from None
        encoder = Encoder(
            model_config.encoder,
            weights_file=encoder_weights,
            runtime=runtime,
            calibration=calibration,
        )
        encoder.check_runtime()  # now: e.g. openvino-int8 for a model without calibration
        encoder.check_weights_file()  # now, naming the file, rather than at the first caption
        card_path = fetch(CARD_FILE, required=False)
        metrics_path = fetch(METRICS_FILE, required=False)
        source = {
            "kind": "local" if is_dir else "hub",
            "model_id": os.path.abspath(model_id) if is_dir else model_id,
            "revision": None if is_dir else _commit_from_path(config_path),
            "requested_revision": revision,
        }
        return cls(
            model_config,
            vocab,
            weights,
            encoder,
            card=_read_optional(card_path, CARD_FILE, json_file=False),
            metrics=_read_optional(metrics_path, METRICS_FILE, json_file=True),
            source=source,
        )
