"""What ``make run`` does until the web app exists: generate a small synthetic IFC-like dataset into
``data/demo`` and inspect it, through the ``nscfate`` command line."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "demo"


def nscfate(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nscfate", *args], check=True, cwd=ROOT)


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)  # data/ is git-ignored scratch space
    nscfate("synth", "--out", str(OUT), "--per-class", "100", "--seed", "0", "--days", "1,3,7", "--with-markers")
    nscfate("inspect", str(OUT))
