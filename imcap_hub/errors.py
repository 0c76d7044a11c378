"""The one base class for errors a user can act on; the CLI and app print these in one line."""

from typing import TypeVar


class ImcapError(Exception):
    """An error whose message is meant for the user, not a traceback."""


E = TypeVar("E", bound=ImcapError)


def naming_file(error: E, filename: str) -> E:
    """``error`` with ``filename`` heading its message, unless the message names it already."""
    message = str(error)
    return error if message.startswith(filename) else type(error)(f"{filename}: {message}")
