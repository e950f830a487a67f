"""The local web UI in a real browser: Debian's Chromium driven by Playwright against the real host
(``python -m apphost`` on 127.0.0.1, a random port, a temporary data directory, a tiny-model worker).

Screenshots of the main pages go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import csv
import io
import json
import re
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.hostproc import ROOT, Host

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
ADMIN = ("ada.lovelace@stemcell-lab.example.org", "correct horse battery")
EXPERIMENT = "E-browser-1"

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@contextmanager
def _serving(tmp: Path, *models: Path):
    """``python -m apphost`` with one worker serving ``models`` (the first is the default); its URL."""
    proc = Host(tmp, "--port", "0", *(a for m in models for a in ("--model", str(m))),
                env={"NSCFATE_ADMIN_EMAIL": ADMIN[0], "NSCFATE_ADMIN_PASSWORD": ADMIN[1]})
    try:
        yield proc.wait_ready()
    finally:
        if proc.proc.poll() is None:
            proc.interrupt()
        proc.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory, tiny_model):
    with _serving(tmp_path_factory.mktemp("browser-host"), tiny_model) as url:
        yield url


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """A tiny model for another task, with another name and version than ``tiny_model``."""
    from nscfate.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-astro_vs_oligo", task="astro_vs_oligo",
                               version="0.0.2")


@pytest.fixture(scope="module")
def two_model_host(tmp_path_factory, tiny_model, second_model):
    """A host of its own whose worker serves ``tiny_model`` (the default) and ``second_model``."""
    with _serving(tmp_path_factory.mktemp("browser-host-2"), tiny_model, second_model) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (scripts/test-setup.sh installs Debian's chromium)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextmanager
def _open_page(browser, url: str):
    """A fresh browser context on ``url``; page errors and unexpected console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # Failed requests the tests cause on purpose: 400 (a request refused as a whole), 401 (wrong password,
    # signed out), 403 (an account not enabled yet), 422 (the rejected file), 503 (a prediction service
    # made unavailable).
    expected = re.compile(r"Failed to load resource: .* status of (400|401|403|422|503)")
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and not expected.search(m.text) else None)
    page.goto(url + "/")
    yield page
    context.close()
    assert problems == []


@pytest.fixture
def page(browser, host):
    with _open_page(browser, host) as page:
        yield page


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Cell images in every accepted format (a 16-bit TIFF among them) and one file that is not an image."""
    import tifffile
    from PIL import Image

    from nscfate.testing import add_cell, cell_image, to_png_bytes

    d = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(7)
    cells = [cell_image(rng, radius=r) for r in (7.0, 10.0, 13.0, 9.0)]
    # cell-b is a doublet, flagged by the single-cell check whatever the model says (the tiny model's
    # confidences move by a few percent between CPUs, so its "low confidence" cannot be counted on)
    cells[1] = add_cell(cell_image(rng, radius=8, centre=(20, 15)), rng, (25, 45), 8)
    (d / "astro_D3B_000123_Ch1-brightfield.png").write_bytes(to_png_bytes(cells[0]))
    Image.fromarray((cells[1] * 255).astype(np.uint8)).save(d / "cell-b.jpg", quality=95)
    Image.fromarray((cells[2] * 255).astype(np.uint8)).save(d / "cell-c.bmp")
    tifffile.imwrite(d / "cell-d-16bit.tif", (1000 + cells[3] * 3000).astype(np.uint16))  # dim 16-bit
    (d / "notes.txt").write_text("plate layout, not an image\n")
    return {p.name: p for p in sorted(d.iterdir())}


def sign_in(page, email=ADMIN[0], password=ADMIN[1]):
    page.fill("#sign-in-email", email)
    page.fill("#sign-in-password", password)
    page.click("#sign-in-form button[type=submit]")


def test_wrong_password_is_refused(page):
    sign_in(page, password="not the password")
    expect(page.locator("#sign-in-error")).to_contain_text("Incorrect email address or password")
    expect(page.locator("#view-sign-in")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()


def test_a_researchers_session(page, host, images):
    expect.set_options(timeout=60_000)  # a shared 2-core machine may be slow
    shot(page, "01-sign-in")
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    # Which model answers and what it was trained on, plainly: this one is synthetic.
    expect(page.locator("#model-banner")).to_contain_text("tiny-medium4 0.0.1")
    expect(page.locator("#model-banner")).to_contain_text("SYNTHETIC")

    # ---- classify: several formats, a 16-bit TIFF and a rejected file; progress shown per file
    page.fill("#experiment", EXPERIMENT)
    held = []
    page.route("**/_/api/predictions", lambda route: held.append(route))  # hold the first uploads a moment
    page.set_input_files("#files", [str(p) for p in images.values()])
    cards = page.locator("#results .result")
    expect(cards).to_have_count(5)
    expect(cards.locator("progress")).to_have_count(5)
    expect(page.locator("#results .stage").first).to_have_text(re.compile(r"Uploading|Classifying|Waiting"))
    for _ in range(100):
        if len(held) >= 3:
            break
        page.wait_for_timeout(50)
    assert len(held) == 3  # three uploads at a time
    for route in held:
        route.continue_()
    page.unroute("**/_/api/predictions")  # (also lets through any upload that reached the handler since)
    expect(page.locator("#results .result[data-outcome]")).to_have_count(5)
    expect(page.locator("#batch-text")).to_have_text("4 of 5 images classified, 1 rejected")

    rejected = page.locator('#results .result[data-outcome="rejected"]')
    expect(rejected).to_have_count(1)
    expect(rejected).to_contain_text("notes.txt")
    expect(rejected.get_by_role("alert")).to_contain_text("Rejected: Not")  # what was wrong...
    expect(rejected.get_by_role("alert")).to_contain_text("accepted: PNG, JPEG, TIFF")  # ...and what is accepted

    ok = page.locator('#results .result[data-outcome="ok"]')
    expect(ok).to_have_count(4)
    predicted, warned = {}, {}
    for i in range(4):
        card = ok.nth(i)
        name = card.locator(".card-title").inner_text()
        bars = card.locator(".bar-row")
        expect(bars).to_have_count(4)  # a bar for every class of the model
        shares = [float(t.rstrip("%")) for t in bars.locator(".bar-value").all_inner_texts()]
        assert abs(sum(shares) - 100) < 0.5, (name, shares)
        verdict = card.locator(".verdict strong").inner_text()
        predicted[name] = verdict
        if card.locator(".warnings li").count():
            warned[name] = card.locator(".warnings li").all_inner_texts()
        expect(card.locator(".model-line")).to_contain_text("tiny-medium4 0.0.1")
        # The image is shown, the 16-bit TIFF too (as a PNG preview from the server).
        img = card.locator("img.thumb")
        expect(img).to_have_attribute("alt", f"Cell image {name}")
        _wait_for_image(page, img)
    assert set(predicted) == {"astro_D3B_000123_Ch1-brightfield.png", "cell-b.jpg", "cell-c.bmp", "cell-d-16bit.tif"}

    # Grad-CAM on request.
    tiff_card = ok.filter(has_text="cell-d-16bit.tif")
    tiff_card.get_by_role("button", name="Show Grad-CAM").click()
    gradcam = tiff_card.locator("img.gradcam-image")
    expect(gradcam).to_be_visible()
    _wait_for_image(page, gradcam)
    shot(page, "02-classify-results")

    # ---- history: find them, filter, export CSV, delete one
    page.click("#nav a[data-view=history]")
    rows = page.locator("#history-table tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("#history-caption")).to_have_text("Predictions 1–4 of 4, newest first")
    shot(page, "03-history")
    # flagged predictions are marked in the list, their warnings in the mark's text
    assert "cell-b.jpg" in warned  # the doublet, at least
    flagged = {rows.nth(i).locator(".filename").inner_text(): rows.nth(i).locator(".flag").get_attribute("title")
               for i in range(4) if rows.nth(i).locator(".flag").count()}
    from server_code.predictions import FLAG_WARNINGS  # the server's reading: judgements, not decoding notes

    expected = {name: "; ".join(t for t in texts if t.startswith(FLAG_WARNINGS)) for name, texts in warned.items()}
    assert flagged == {name: text for name, text in expected.items() if text}
    # every column, View and Delete included, in sight on a laptop screen without scrolling sideways
    assert page.locator("#view-history .table-wrap").evaluate("e => e.scrollWidth <= e.clientWidth")

    condition = predicted["cell-d-16bit.tif"]
    page.select_option("#f-condition", label=condition)
    page.fill("#f-experiment", EXPERIMENT)
    page.click("#history-filters button[type=submit]")
    expected = sorted(n for n, c in predicted.items() if c == condition)
    expect(rows).to_have_count(len(expected))
    assert sorted(rows.locator("td.filename").all_inner_texts()) == expected
    assert {t.split(" ⚠")[0] for t in rows.locator("td:nth-child(3)").all_inner_texts()} == {condition}

    with page.expect_download() as download:
        page.click("#export-csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted(r["filename"] for r in table) == expected
    assert {r["predicted_condition"] for r in table} == {condition} and {r["experiment"] for r in table} == {EXPERIMENT}
    assert all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 1e-3 for r in table)

    page.click("#history-filters button[type=reset]")
    expect(rows).to_have_count(4)
    page.fill("#f-experiment", "no such experiment")  # typed, not applied: the export follows what is typed
    with page.expect_download() as download:
        page.click("#export-csv")
    assert list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))) == []
    page.fill("#f-experiment", "")
    page.fill("#f-date-from", "2026-12-09")  # an export the server refuses says why, not a failed download
    page.fill("#f-date-to", "2026-12-01")
    page.click("#export-csv")
    expect(page.locator("#history-error")).to_have_text(
        "Not exported: The To date is before the From date (date_to before date_from)")
    page.fill("#f-date-from", "")
    page.fill("#f-date-to", "")
    row = rows.filter(has_text="cell-b.jpg")
    deleted_id = row.get_attribute("data-id")
    row.get_by_role("button", name="Delete cell-b.jpg").click()
    row.get_by_role("button", name="Confirm delete").click()
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text="cell-b.jpg")).to_have_count(0)
    assert page.request.get(f"{host}/_/api/predictions/{deleted_id}").status == 404

    # ---- detail, experiment summary, model cards
    page.fill("#f-experiment", EXPERIMENT)
    page.click("#history-filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/history\?.*experiment="))
    filtered_url = page.url
    rows.filter(has_text="cell-d-16bit.tif").get_by_role("link", name="View").click()
    expect(page.locator("#detail-title")).to_have_text("cell-d-16bit.tif")
    _wait_for_image(page, page.locator("#detail-body img.large"))
    expect(page.locator("#detail-body .facts")).to_contain_text(EXPERIMENT)
    shot(page, "04-detail")
    # the experiment and notes can be set afterwards (files dropped before the experiment was typed)
    page.get_by_role("button", name="Edit experiment and notes").click()
    expect(page.locator("#edit-experiment")).to_be_focused()
    expect(page.locator("#edit-experiment")).to_have_value(EXPERIMENT)
    page.fill("#edit-notes", "re-imaged on day 3")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#detail-body .facts")).to_contain_text("re-imaged on day 3")
    expect(page.locator("#detail-body .facts")).to_contain_text(EXPERIMENT)
    expect(page.locator("#edit-notes")).to_have_count(0)
    page.click("#detail-back")  # back to the history page it came from, its filters kept
    expect(page).to_have_url(filtered_url)
    expect(page.locator("#f-experiment")).to_have_value(EXPERIMENT)

    page.click("#nav a[data-view=summary]")
    page.fill("#summary-experiment", EXPERIMENT)
    page.click("#summary-form button[type=submit]")
    expect(page.locator("#summary-body")).to_contain_text(f"3 cells in experiment “{EXPERIMENT}”")
    summary_rows = page.locator("#summary-body tbody tr")
    expect(summary_rows).to_have_count(4)
    counts = [int(t) for t in summary_rows.locator("td:nth-child(2)").all_inner_texts()]
    assert sum(counts) == 3
    shot(page, "05-summary")

    page.click("#nav a[data-view=models]")
    card = page.locator(".model-card")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("Trained on synthetic data")
    expect(card).to_contain_text("Held-out test accuracy")
    expect(card.locator(".accuracy-chart .bar-row")).to_have_count(2)  # held-out test vs chance (1/4)
    expect(card.locator(".accuracy-chart")).to_contain_text("25.0%")
    plot = card.locator(".plots figure a").first  # each plot opens full size (its labels are small in the card)
    expect(plot).to_have_attribute("target", "_blank")
    assert page.request.get(host + plot.get_attribute("href")).headers["content-type"] == "image/png"
    shot(page, "06-models")

    page.set_viewport_size({"width": 800, "height": 1100})  # a tablet
    page.click("#nav a[data-view=classify]")
    shot(page, "07-classify-tablet")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # nothing wider than the screen
    page.set_viewport_size({"width": 400, "height": 900})  # a phone: tables scroll inside their box
    for view in ("history", "summary", "classify"):
        page.click(f"#nav a[data-view={view}]")
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 400, view
    shot(page, "08-history-phone")

    # ---- sign out, and be refused
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    page.click("#sign-out")
    expect(page.locator("#view-sign-in")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_have_text("You are signed out.")
    assert "#" not in page.url  # the next person to sign in starts on Classify
    page.goto(host + "/#/history")
    expect(page.locator("#view-sign-in")).to_be_visible()
    expect(page.locator("#view-history")).to_be_hidden()
    assert page.request.get(f"{host}/_/api/predictions").status == 401
    # The old session cookie is dead on the server too.
    stale = httpx.get(f"{host}/_/api/predictions", cookies=cookie, timeout=30)
    assert stale.status_code == 401


def test_a_file_the_server_could_not_classify_can_be_sent_again(page, images):
    """Not the file's fault (the prediction service was away): said so, and one click sends it again."""
    expect.set_options(timeout=60_000)
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    name, other = "astro_D3B_000123_Ch1-brightfield.png", "cell-c.bmp"
    message = ("The prediction service is not available right now (UplinkDisconnectedError); nothing was stored "
               "for this file, send it again")

    def unavailable(route):  # the answer for as many files as this request carries (few files: one each)
        sent = [f.decode() for f in re.findall(rb'filename="([^"]+)"', route.request.post_data_buffer)]
        route.fulfill(status=503, content_type="application/json", body=json.dumps({
            "results": [{"ok": False, "index": i, "filename": f, "error": {
                "code": "worker_unavailable", "retry_later": True, "message": message}} for i, f in enumerate(sent)],
            "n_ok": 0, "n_rejected": len(sent)}))

    page.route("**/_/api/predictions", unavailable)
    page.fill("#experiment", "E-retry")
    page.set_input_files("#files", [str(images[name]), str(images[other])])
    cards = page.locator('#results .result[data-outcome="not-classified"]')
    expect(cards).to_have_count(2)
    card = cards.filter(has_text=name)
    expect(card.get_by_role("alert")).to_contain_text("Not classified: The prediction service is not available")
    expect(page.locator("#batch-text")).to_have_text("0 of 2 images classified, 2 not classified (try again)")
    page.unroute("**/_/api/predictions")
    page.fill("#experiment", "E-next")  # typed for the next upload: not this file's
    card.get_by_role("button", name="Try again").click()
    expect(page.locator('#results .result[data-outcome="ok"]')).to_have_count(1)
    stored = page.request.get(page.url.split("#")[0] + "_/api/predictions?experiment=E-retry",
                              headers={"X-Requested-With": "fetch"}).json()
    assert stored["total"] == 1 and stored["rows"][0]["filename"] == name
    expect(page.locator("#results .result")).to_have_count(2)  # the failed card made way for the new one
    # the status counts every card shown, not only the file sent again ("1 of 1" said nothing of the other)
    expect(page.locator("#batch-text")).to_have_text("1 of 2 images classified, 1 not classified (try again)")


def test_many_files_go_several_to_a_request_and_each_card_gets_its_own_answer(page, images, tmp_path):
    """One file per request kept the worker's batches at 1-2 images; many files now go in groups (three
    requests at a time), and each file's answer still lands on its own card, a rejected one among them."""
    expect.set_options(timeout=60_000)
    valid = [p for p in images.values() if p.suffix != ".txt"]
    files = []
    for i in range(19):  # distinct names, so that a card answered with another file's result would show it
        source = valid[i % len(valid)]
        files.append(tmp_path / f"cell-{i:02d}{source.suffix}")
        files[-1].write_bytes(source.read_bytes())
    files.insert(7, images["notes.txt"])
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/_/api/predictions") else None)
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    page.fill("#experiment", "E-groups")
    page.set_input_files("#files", [str(p) for p in files])
    expect(page.locator("#results .result[data-outcome]")).to_have_count(20)
    expect(page.locator("#batch-text")).to_have_text("19 of 20 images classified, 1 rejected")
    assert len(posts) == 3  # 20 files in three requests (7, 7 and 6), not twenty
    rejected = page.locator('#results .result[data-outcome="rejected"]')
    expect(rejected.locator(".card-title")).to_have_text("notes.txt")
    ok = page.locator('#results .result[data-outcome="ok"]')
    for i in range(19):
        card = ok.nth(i)
        expect(card.locator("img.thumb")).to_have_attribute("alt", f"Cell image {card.locator('.card-title').inner_text()}")
    stored = page.request.get(page.url.split("#")[0] + "_/api/predictions?experiment=E-groups&page_size=50",
                              headers={"X-Requested-With": "fetch"}).json()
    assert sorted(r["filename"] for r in stored["rows"]) == sorted(p.name for p in files if p.suffix != ".txt")


def test_a_request_refused_as_a_whole_says_so_on_every_card_it_carried(page, images, tmp_path):
    """An error about the request itself (no per-file results) reaches each file that went in it."""
    expect.set_options(timeout=60_000)
    source = images["cell-c.bmp"]
    files = [tmp_path / f"whole-{i}.bmp" for i in range(6)]  # two requests of three
    for f in files:
        f.write_bytes(source.read_bytes())
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    page.route("**/_/api/predictions", lambda route: route.fulfill(status=400, content_type="application/json", body=json.dumps(
        {"error": {"code": "unknown_model", "message": "No worker serves the model 'nope'"}})))
    page.set_input_files("#files", [str(f) for f in files])
    rejected = page.locator('#results .result[data-outcome="rejected"]')
    expect(rejected).to_have_count(6)
    for i in range(6):
        expect(rejected.nth(i).get_by_role("alert")).to_contain_text("No worker serves the model 'nope'")
    expect(page.locator("#batch-text")).to_have_text("0 of 6 images classified, 6 rejected")
    page.unroute("**/_/api/predictions")


def test_a_new_account_waits_for_a_lab_admin(page, browser, host):
    newcomer = ("cy@lab.org", "cyclic horse battery")
    page.click(".signup summary")
    page.fill("#sign-up-email", newcomer[0])
    page.fill("#sign-up-password", newcomer[1])
    page.click("#sign-up-form button[type=submit]")
    expect(page.locator("#sign-up-message")).to_contain_text("A lab admin has to enable it")
    sign_in(page, *newcomer)
    expect(page.locator("#sign-in-error")).to_contain_text("not enabled yet")

    admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    admin.goto(host + "/")
    sign_in(admin)
    expect(admin.locator("#nav-users")).to_be_visible()
    admin.click("#nav-users")
    row = admin.locator('#users-table tr[data-email="cy@lab.org"]')
    expect(row).to_contain_text("awaiting approval")
    shot(admin, "08-users")
    row.get_by_role("button", name="Enable cy@lab.org").click()
    expect(row).to_contain_text("enabled")
    expect(row.get_by_role("button", name="Disable cy@lab.org")).to_be_visible()
    row.get_by_role("button", name="Disable cy@lab.org").click()  # asks first...
    row.get_by_role("button", name="Cancel").click()  # ...and can be taken back
    expect(row).to_contain_text("enabled")
    expect(row.get_by_role("button", name="Disable cy@lab.org")).to_be_focused()
    # A role changes only when confirmed (an arrow key on the select alone must not do it)...
    role = row.get_by_role("combobox", name="Role of cy@lab.org")
    role.select_option("lab_admin")
    expect(role).to_be_disabled()
    row.get_by_role("button", name="Cancel").click()
    expect(role).to_have_value("researcher")
    expect(role).to_be_enabled()
    # ...and a refused change leaves the select showing what is stored: the last lab admin stays one
    own = admin.get_by_role("combobox", name=f"Role of {ADMIN[0]}")
    own.select_option("researcher")
    admin.get_by_role("button", name=f"Confirm: Make {ADMIN[0]} a researcher").click()
    expect(admin.locator("#users-error")).to_contain_text("This is the last lab admin")
    expect(own).to_have_value("lab_admin")
    admin.context.close()

    sign_in(page, *newcomer)
    expect(page.locator("#view-classify")).to_be_visible()
    expect(page.locator("#nav-users")).to_be_hidden()  # a researcher


def test_the_first_lab_admin_chooses_a_password_before_anything_else(browser, tmp_path):
    """The first start makes the lab admin a password and prints it once; signed in with it, the app
    asks for a password of the person's own before any other page."""
    expect.set_options(timeout=60_000)
    proc = Host(tmp_path, "--port", "0", "--workers", "0")
    try:
        url = proc.wait_ready(60)
        made_up = re.search(r"One-time password \(shown only now\): (\S+)", proc.stdout()).group(1)
        with _open_page(browser, url) as page:
            sign_in(page, "admin@localhost.localdomain", made_up)
            expect(page.locator("#view-account")).to_be_visible()
            expect(page.locator("#password-temporary")).to_be_visible()
            page.click("#nav a[data-view=history]")
            expect(page.locator("#view-account")).to_be_visible()  # not before a password is chosen
            expect(page.locator("#view-history")).to_be_hidden()
            page.reload()
            expect(page.locator("#view-account")).to_be_visible()  # nor after a reload
            page.fill("#old-password", made_up)
            page.fill("#new-password", ADMIN[1])
            page.click("#password-form button[type=submit]")
            expect(page.locator("#password-message")).to_contain_text("Password changed")
            expect(page.locator("#password-temporary")).to_be_hidden()
            page.click("#nav a[data-view=history]")
            expect(page.locator("#view-history")).to_be_visible()
            page.reload()
            expect(page.locator("#view-history")).to_be_visible()
    finally:
        if proc.proc.poll() is None:
            proc.interrupt()
        proc.stop()


def test_disabling_an_account_ends_its_session(page, browser, host):
    """A lab admin disables an account in two steps; the person's open page is signed out at its next
    request, and the account is listed as disabled (not as a new one awaiting approval)."""
    expect.set_options(timeout=60_000)
    person = ("dee@lab.org", "dormant horse battery")
    admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    admin.goto(host + "/")
    sign_in(admin)
    expect(admin.locator("#nav-users")).to_be_visible()
    signup = httpx.post(f"{host}/_/auth/signup", json={"email": person[0], "password": person[1]},
                        headers={"X-Requested-With": "fetch"}, timeout=30)
    assert signup.is_success, signup.text
    admin.click("#nav-users")
    row = admin.locator(f'#users-table tr[data-email="{person[0]}"]')
    row.get_by_role("button", name=f"Enable {person[0]}").click()
    expect(row.get_by_role("button", name=f"Disable {person[0]}")).to_be_visible()

    sign_in(page, *person)
    expect(page.locator("#view-classify")).to_be_visible()

    # Made a lab admin, the person can step down again; their page then stops offering Users.
    row.get_by_role("combobox", name=f"Role of {person[0]}").select_option("lab_admin")
    admin.get_by_role("button", name=f"Confirm: Make {person[0]} a lab admin").click()
    expect(admin.locator("#announcer")).to_have_text(f"Updated {person[0]}")
    page.reload()
    page.click("#nav-users")
    page.get_by_role("combobox", name=f"Role of {person[0]}").select_option("researcher")
    page.get_by_role("button", name=f"Confirm: Make {person[0]} a researcher").click()
    expect(page.locator("#view-classify")).to_be_visible()
    expect(page.locator("#nav-users")).to_be_hidden()
    expect(page.locator("#users-error")).to_be_hidden()

    row.get_by_role("button", name=f"Disable {person[0]}").click()
    row.get_by_role("button", name=f"Confirm disabling {person[0]}").click()
    expect(row.get_by_role("button", name=f"Enable {person[0]}")).to_be_visible()
    expect(row).to_contain_text("disabled")
    expect(row).not_to_contain_text("awaiting approval")
    admin.context.close()

    page.click("#nav a[data-view=history]")
    expect(page.locator("#view-sign-in")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_have_text("Your session has ended; sign in again.")
    sign_in(page, *person)
    expect(page.locator("#sign-in-error")).to_contain_text("This account has been disabled")


def test_an_image_without_a_cell_is_said_so_and_left_out_of_the_summary(page, images):
    """A blank frame is classified (the model always answers) but said to hold no cell, first; the
    experiment summary counts it apart from the cells' shares."""
    from PIL import Image

    expect.set_options(timeout=60_000)
    blank = images["cell-b.jpg"].parent.parent / "blank-frame.png"
    Image.new("L", (60, 47), 128).save(blank)
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    page.fill("#experiment", "E-no-cell")
    page.set_input_files("#files", [str(blank), str(images["cell-c.bmp"])])
    cards = page.locator('#results .result[data-outcome="ok"]')
    expect(cards).to_have_count(2)
    blank_card = cards.filter(has_text="blank-frame.png")
    expect(blank_card.locator(".verdict")).to_have_class(re.compile("doubtful"))
    expect(blank_card.locator(".verdict strong")).to_have_text("No cell found")
    expect(blank_card.locator(".warnings")).to_contain_text("no cell found: the image is nearly uniform")
    expect(cards.filter(has_text="cell-c.bmp").locator(".verdict")).to_contain_text("Predicted condition:")
    page.set_input_files("#files", [str(images["cell-c.bmp"])])  # the same cell again: not a second cell
    expect(cards).to_have_count(3)

    page.click("#nav a[data-view=summary]")
    page.fill("#summary-experiment", "E-no-cell")
    page.click("#summary-form button[type=submit]")
    body = page.locator("#summary-body")
    expect(body).to_contain_text("1 cell in experiment “E-no-cell”")
    expect(body).to_contain_text("1 image flagged as no cell or not a single cell is left out.")
    expect(body).to_contain_text("Uploads of an image already counted (the same file again): 1, counted once.")
    expect(body.locator(".left-out")).to_have_text("Left out of the shares: 1 image: no cell found.")
    expect(body.locator(".repeats")).to_have_text("Uploads of an image already counted: 1, counted once.")
    counts = [int(t) for t in body.locator("tbody tr td:nth-child(2)").all_inner_texts()]
    assert sum(counts) == 1

    # an experiment of blank frames only: said so, not an empty table
    page.click("#nav a[data-view=classify]")
    page.fill("#experiment", "E-blank-only")
    page.set_input_files("#files", [str(blank)])
    expect(cards).to_have_count(4)
    page.click("#nav a[data-view=summary]")
    page.fill("#summary-experiment", "E-blank-only")
    page.click("#summary-form button[type=submit]")
    expect(body).to_contain_text("0 cells in experiment “E-blank-only”")
    expect(body).to_contain_text("No cells to share out: every image of this model was left out.")
    expect(body.locator("table")).to_have_count(0)


def test_the_model_banner_follows_the_model_picked(browser, two_model_host, tiny_model, second_model, images):
    """The banner names the model the next upload goes to: the default at first, then the one picked;
    and the picked model is the one that classifies."""
    from nscfate.modeldir import read_model_dir

    expect.set_options(timeout=60_000)
    a, b = read_model_dir(tiny_model).card(), read_model_dir(second_model).card()
    assert (a["name"], a["version"], len(a["classes"])) != (b["name"], b["version"], len(b["classes"]))
    assert a["trained_on"] != b["trained_on"]
    with _open_page(browser, two_model_host) as page:
        sign_in(page)
        expect(page.locator("#view-classify")).to_be_visible()
        banner, picker = page.locator("#model-banner"), page.locator("#model-select")
        expect(picker.locator("option")).to_have_count(2)
        expect(picker).to_have_value(a["name"])
        expect(banner).to_contain_text(f"Predictions by {a['name']} {a['version']} (tiny-cnn, 4 classes).")
        expect(banner).to_contain_text(f"Trained on SYNTHETIC data: {a['trained_on']}")
        expect(banner).not_to_contain_text(b["name"])

        picker.select_option(b["name"])
        expect(banner).to_contain_text(f"Predictions by {b['name']} {b['version']} (tiny-cnn, 2 classes).")
        expect(banner).to_contain_text(f"Trained on SYNTHETIC data: {b['trained_on']}")
        expect(banner).to_contain_text("It has never seen real cells")
        expect(banner).not_to_contain_text(a["name"])
        expect(banner).not_to_contain_text(a["trained_on"])
        shot(page, "09-classify-second-model")

        # An upload now goes to the picked model, and its result card says so.
        page.fill("#experiment", "E-second-model")
        page.set_input_files("#files", [str(images["astro_D3B_000123_Ch1-brightfield.png"])])
        card = page.locator('#results .result[data-outcome="ok"]')
        expect(card).to_have_count(1)
        expect(card.locator(".model-line")).to_have_text(
            f"Model {b['name']} {b['version']} (trained on synthetic data: not for real cells)")
        expect(card.locator(".bar-row")).to_have_count(2)  # the picked model's classes, not the default's 4

        picker.select_option(a["name"])  # and back
        expect(banner).to_contain_text(f"Predictions by {a['name']} {a['version']}")
        expect(banner).not_to_contain_text(b["name"])


def test_every_page_passes_axe_accessibility_checks(page, images):
    """axe-core (the engine of browser accessibility audits) finds nothing on any page, with content
    on it: result cards (one rejected), Grad-CAM, history rows, a detail, a summary, model cards, users."""
    from axe_playwright_python.sync_playwright import Axe

    expect.set_options(timeout=60_000)
    axe = Axe()
    found = {}

    def audit(view):
        page.wait_for_load_state("networkidle")
        violations = axe.run(page).response["violations"]
        found[view] = [(v["impact"], v["id"], [n["target"] for n in v["nodes"]][:3]) for v in violations]

    audit("sign-in")
    sign_in(page)
    expect(page.locator("#view-classify")).to_be_visible()
    page.fill("#experiment", "E-axe")
    page.set_input_files("#files", [str(images["cell-c.bmp"]), str(images["notes.txt"])])
    expect(page.locator("#results .result[data-outcome]")).to_have_count(2)
    page.locator('#results .result[data-outcome="ok"]').get_by_role("button", name="Show Grad-CAM").click()
    expect(page.locator("#results img.gradcam-image")).to_be_visible()
    audit("classify")
    page.click("#nav a[data-view=history]")
    expect(page.locator("#history-table tbody tr").first).to_be_visible()
    audit("history")
    page.locator("#history-table tbody tr").first.get_by_role("link", name="View").click()
    expect(page.locator("#detail-body img.large")).to_be_visible()
    audit("detail")
    page.click("#nav a[data-view=summary]")
    page.fill("#summary-experiment", "E-axe")
    page.click("#summary-form button[type=submit]")
    expect(page.locator("#summary-body tbody tr").first).to_be_visible()
    audit("summary")
    page.click("#nav a[data-view=models]")
    expect(page.locator(".model-card").first).to_be_visible()
    audit("models")
    page.click("#nav a[data-view=users]")
    expect(page.locator("#users-table tbody tr").first).to_be_visible()
    audit("users")
    page.click("#who")
    expect(page.locator("#view-account")).to_be_visible()
    audit("account")
    assert found == {view: [] for view in found}


def _wait_for_image(page, locator):
    """Wait until an <img> has loaded real pixels (not a broken image)."""
    expect(locator).to_be_visible()
    handle = locator.element_handle()
    handle.wait_for_element_state("stable")
    for _ in range(200):
        if handle.evaluate("img => img.complete && img.naturalWidth > 0"):
            return
        page.wait_for_timeout(100)
    pytest.fail(f"image {locator} did not load")
