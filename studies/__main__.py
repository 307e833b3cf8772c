from searchspace.cli import cli_main

from .run import main

cli_main(main)
