import sys

from .. import cli
from .cli import main

sys.exit(cli.guard(main))
