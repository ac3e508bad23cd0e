"""Where things are: the repository, the pymda install, the corpus.

Environment (set by scripts/test; sensible defaults otherwise):
- PYMDA_PREFIX  the venv pymda is installed in (/opt/pymda as root, else
                <repo>/.venv)
- PYMDA_BIN     the delivery launcher (<prefix>/bin/pymda)
- PYMDA_CORPUS  the directory of real messages (<repo>/../shared/corpus/real)
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def is_root():
    return os.geteuid() == 0


def prefix():
    if os.environ.get("PYMDA_PREFIX"):
        return Path(os.environ["PYMDA_PREFIX"])
    return Path("/opt/pymda") if is_root() else REPO / ".venv"


def pymda_bin():
    if os.environ.get("PYMDA_BIN"):
        return Path(os.environ["PYMDA_BIN"])
    return prefix() / "bin" / "pymda"


# what a build of the package needs (scripts/install's stage() copies the same)
BUILD_FILES = ("pymda", "bin", "pyproject.toml", "setup.py", "README.md")


def stage_source(dst):
    """Copy what a build needs into the new directory ``dst`` (pip builds
    in the source tree: a copy keeps build/ out of the checkout)."""
    import shutil

    os.makedirs(dst)
    for name in BUILD_FILES:
        what = REPO / name
        if what.is_dir():
            shutil.copytree(what, os.path.join(dst, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(what, os.path.join(dst, name))
    return dst


def corpus_dir():
    if os.environ.get("PYMDA_CORPUS"):
        return Path(os.environ["PYMDA_CORPUS"])
    return (REPO.parent / "shared" / "corpus" / "real").resolve()


def corpus_messages():
    """Sorted message files of the corpus (SOURCES.tsv and README excluded)."""
    d = corpus_dir()
    if not d.is_dir():
        return []
    return sorted(
        p for p in d.iterdir()
        if p.is_file() and p.suffix not in (".tsv", ".md") and not p.name.startswith(".")
    )
