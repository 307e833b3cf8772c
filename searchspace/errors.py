"""The one exception type for user mistakes (bad genome, bad config, bad path), and `redact`.

Every command-line entry point (searchspace.cli) turns it into one line on stderr and exit status 2.
"""

import re

# scheme://user:password@host -> scheme://user:***@host (SQLAlchemy-style URLs in any text)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):([^@\s'\"]+)@")


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what and what is allowed."""


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: storage URLs carry credentials."""
    return _URL_PASSWORD.sub(r"\1:***@", str(text))
