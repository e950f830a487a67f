"""The README's screenshots, taken from the real app with the shipped model.

Starts ``python -m apphost`` as ``make run`` does (shipped models, one worker, a temporary data
directory, a lab admin from the environment variables it documents), signs in with Debian's Chromium
(Playwright), uploads one synthetic IFC crop of each medium (8-bit OME-TIFF and a 16-bit TIFF, as
``nscfate synth`` writes them) plus a text file, and saves the Classify page to
``docs/screenshot.png`` and the History and Models pages beside it.

    python scripts/make_screenshots.py            # writes docs/screenshot*.png
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from apphost.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
READY = re.compile(r"NSC Fate is running at (http://\S+)")
EMAIL, PASSWORD = "screenshots@lab.example", "screenshot session only"

log = logging.getLogger("make_screenshots")


def cell_files(folder: Path) -> list[Path]:
    """One synthetic crop per medium (the last one as 16-bit TIFF) and a file that is not an image."""
    import numpy as np
    import tifffile

    from nscfate.synth import SynthConfig, generate

    config = SynthConfig(per_class=3, seed=11)
    files = []
    for i, medium in enumerate(config.media):
        img = list(generate(config, medium))[1]
        path = folder / img.filename(1, "tif")
        pixels = img.pixels
        if i == len(config.media) - 1:  # as a 16-bit camera export: same picture, 16-bit range
            pixels = (pixels.astype(np.uint16) * 64 + 900)
            path = path.with_name(path.stem.replace(".ome", "") + "-16bit.tif")
        buf = io.BytesIO()
        tifffile.imwrite(buf, pixels, photometric="minisblack")
        path.write_bytes(buf.getvalue())
        files.append(path)
    (folder / "plate-notes.txt").write_text("plate layout, not an image\n")
    return [*files, folder / "plate-notes.txt"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "NSCFATE_DATA_DIR": str(Path(tmp) / "data"), "NSCFATE_ADMIN_EMAIL": EMAIL,
               "NSCFATE_ADMIN_PASSWORD": PASSWORD, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("ANVIL_UPLINK_KEY", None)
        out_path = Path(tmp) / "host.out"
        with open(out_path, "wb") as out:
            host = subprocess.Popen([sys.executable, "-m", "apphost", "--port", str(free_port())], cwd=ROOT,
                                    env=env, stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (m := READY.search(out_path.read_text(errors="replace"))):
                if host.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the host did not start:\n{out_path.read_text(errors='replace')}")
                time.sleep(0.3)
            url = m.group(1)
            log.info("host ready at %s", url)
            files = cell_files(Path(tmp))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                expect.set_options(timeout=60_000)
                page.goto(url + "/")
                page.fill("#sign-in-email", EMAIL)
                page.fill("#sign-in-password", PASSWORD)
                page.click("#sign-in-form button[type=submit]")
                expect(page.locator("#view-classify")).to_be_visible()
                page.fill("#experiment", "E-2026-11 day 3")
                page.set_input_files("#files", [str(f) for f in files])
                expect(page.locator("#results .result[data-outcome]")).to_have_count(len(files))
                for img in page.locator("#results img.thumb").all():
                    expect(img).to_have_js_property("complete", True)
                page.screenshot(path=str(args.out / "screenshot.png"), full_page=True)
                for view, name in (("history", "screenshot-history.png"), ("models", "screenshot-models.png")):
                    page.click(f"#nav [data-view={view}]")
                    expect(page.locator(f"#view-{view}")).to_be_visible()
                    page.wait_for_load_state("networkidle")
                    for img in page.locator(f"#view-{view} img").all():  # lazy images load once in view
                        img.scroll_into_view_if_needed()
                        expect(img).to_have_js_property("complete", True)
                        if not img.evaluate("i => i.naturalWidth"):
                            raise SystemExit(f"an image of the {view} page did not load: {img.get_attribute('src')}")
                    page.evaluate("window.scrollTo(0, 0)")
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(args.out / name), full_page=True)
                browser.close()
            log.info("wrote %s", ", ".join(str(args.out / n) for n in ("screenshot.png", "screenshot-history.png",
                                                                         "screenshot-models.png")))
        finally:
            os.killpg(host.pid, signal.SIGINT)
            host.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
