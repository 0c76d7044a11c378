"""The imcap model card: a Jinja2 template (``template.md``) and what fills it (``render.py``)
from the model config, the metrics and the run's :class:`training.record.TrainRecord`."""

from .render import (
    DEFAULT_LICENSE,
    INSTALL_COMMAND,
    NOT_RECORDED,
    REPO_PLACEHOLDER,
    TEMPLATE_PATH,
    CardError,
    card_data,
    eval_results,
    render_card,
)

__all__ = [
    "DEFAULT_LICENSE",
    "INSTALL_COMMAND",
    "NOT_RECORDED",
    "REPO_PLACEHOLDER",
    "TEMPLATE_PATH",
    "CardError",
    "card_data",
    "eval_results",
    "render_card",
]
