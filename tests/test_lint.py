"""Static check of every module: no undefined name, no import that is
missing (pyflakes).  A merge that drops an ``import sys`` used only on a
rare path (a daemon's exit) would otherwise surface as a traceback in
production - exit 1, which postfix bounces."""

import subprocess
import sys

from support import paths


def test_no_undefined_names():
    proc = subprocess.run([sys.executable, "-m", "pyflakes", "pymda", "tests", "bench"],
                          cwd=paths.REPO, capture_output=True, text=True, check=False)
    assert "No module named pyflakes" not in proc.stderr, proc.stderr
    serious = [line for line in proc.stdout.splitlines()
               if "undefined name" in line and "pymda/fastos.py" not in line]
    assert serious == [], "\n".join(serious)
