"""Build hook: the wheel carries pymda's start-up bundle (pymda/bundle.py).

Everything else about the package is in pyproject.toml.  After the normal
build step copies the package, the bundle of its modules is written into
the build's pymda/__pycache__, so a plain `pip install` has it too; it
holds code for the Python that builds the wheel (another Python ignores
it).  Editable installs get none: their modules are the working tree's.
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBundle(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or self.dry_run:
            return
        package = os.path.join(self.build_lib, "pymda")
        builder = runpy.run_path(os.path.join(package, "bundle.py"))
        out = builder["build"](package, mtimes=False)
        self.announce(f"wrote {out}", level=2)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            import sys
            outputs.append(os.path.join(self.build_lib, "pymda", "__pycache__",
                                        "startup." + sys.implementation.cache_tag + ".bundle"))
        return outputs


setup(cmdclass={"build_py": BuildWithBundle})
