"""The one exception type for user mistakes (bad genome, bad config, bad path).

Every command-line entry point turns it into one line on stderr and exit status 2.
"""


import re

# scheme://user:password@host -> scheme://user:***@host (SQLAlchemy-style URLs in any text)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):([^@\s'\"]+)@")


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what and what is allowed."""


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: storage URLs carry credentials."""
    return _URL_PASSWORD.sub(r"\1:***@", str(text))


def cli_main(main):
    """Run `main()`; a UserError becomes one stderr line and exit 2, Ctrl-C exit 130."""
    import sys

    try:
        code = main()
    except UserError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        raise SystemExit(0)
    raise SystemExit(code or 0)


def argument_parser(**kwargs):
    """An argparse parser whose usage errors are UserErrors (one line, exit 2) like every other mistake."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(message)

    return _Parser(**kwargs)
