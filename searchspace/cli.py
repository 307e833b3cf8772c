"""What every command line of the four packages shares: one error line and exit 2 for a UserError.

searchspace is the package the others import, so the helpers live here; they hold no search-space logic.
"""

from .errors import UserError, redact


def cli_main(main):
    """Run `main()`; a UserError becomes one stderr line and exit 2, Ctrl-C exit 130."""
    import sys

    try:
        code = main()
    except UserError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        raise SystemExit(0) from None
    raise SystemExit(code or 0)


def argument_parser(**kwargs):
    """An argparse parser whose usage errors are UserErrors (one line, exit 2) like every other mistake."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(message)

    return _Parser(**kwargs)
