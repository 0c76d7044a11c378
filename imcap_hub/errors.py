"""The one base class for errors a user can act on; the CLI and app print these in one line."""


class ImcapError(Exception):
    """An error whose message is meant for the user, not a traceback."""
