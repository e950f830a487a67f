"""Placeholder for `make run` until the local app host exists: shows the CLI."""
import subprocess
import sys

raise SystemExit(subprocess.call([sys.executable, "-m", "nscfate", "--help"]))
