"""python -m pymda: the per-message delivery command."""
import sys

from pymda.cli import main

sys.exit(main())
