"""User-facing errors of the training CLIs: shown as one line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad name, missing file, existing version); exit status 2."""
