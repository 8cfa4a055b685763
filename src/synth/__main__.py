import sys

from ..core import cli
from .cli import main

sys.exit(cli.guard(main))
