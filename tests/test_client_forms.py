"""The Anvil client forms (run under CPython by tests/anvilclient.py) against the real server code and the
real worker's result shapes: every field a form, item template, data binding or DataGrid column reads is
one the server sends, and the event handlers do not raise where the server refuses (they say why)."""

from __future__ import annotations

import datetime as dt
import sys

import anvil
import pytest

from apphost.testing import FakeWorker, make_runtime, png_bytes
from tests import anvilclient


@pytest.fixture
def worker():
    return FakeWorker()


@pytest.fixture
def rt(tmp_path, worker):
    runtime = make_runtime(tmp_path, worker)
    yield runtime
    runtime.close()
    runtime.db.dispose()


@pytest.fixture
def app(rt):
    """The client, its server calls going to the runtime as a signed-in lab admin."""
    admin = rt.accounts.create_session(rt.accounts.create_user("ada@lab.org", "correct horse battery",
                                                               role="lab_admin"))
    rt.accounts.create_user("bob@lab.org", "correct horse battery", enabled=False)  # awaiting approval
    client = anvilclient.client()
    client.call = lambda name, *args, **kwargs: rt.call(name, *args, session=admin, **kwargs)
    return client


def pngs(n, start=0, extra=b""):
    return [anvil.BlobMedia("image/png", png_bytes(start + i) + extra, name="cell%d.png" % (start + i))
            for i in range(n)]


def classify(app, files, experiment="E1"):
    form = app.forms["Classify"]()
    form.file_loader.files = files
    form.experiment_box.text = experiment
    form.classify_button_click()
    return form


# ---- upload chunks: within what classify_cell_images accepts in one call


def test_chunks_stay_within_the_servers_limits(rt):
    batches = anvilclient.client().module("batches")
    uploads = sys.modules["%s.uploads" % rt.package_name]
    assert batches.BYTES_PER_CALL <= uploads.MAX_TOTAL_BYTES
    assert batches.FILES_PER_CALL <= uploads.MAX_FILES_PER_CALL

    class F:
        def __init__(self, length):
            self.length = length

    mb = 1024 * 1024
    files = [F(19 * mb) for _ in range(8)] + [F(300 * mb)] + [F(1) for _ in range(20)]
    chunks = batches.upload_chunks(files)
    assert [f for _, chunk in chunks for f in chunk] == files  # all of them, in order
    assert [start for start, _ in chunks] == [0, 6, 8, 9, 25]
    for start, chunk in chunks:
        assert chunk == files[start:start + len(chunk)] and len(chunk) <= batches.FILES_PER_CALL
        assert len(chunk) == 1 or sum(f.length for f in chunk) <= batches.BYTES_PER_CALL
    assert batches.upload_chunks([]) == []


def test_many_big_images_are_all_classified(app):
    """Eight 17 MB images add up to more than the server takes in one call: the form must not send them
    together (the server would refuse all of them, and the form stop)."""
    big = [anvil.BlobMedia("image/png", png_bytes(i) + bytes(17 * 1024 * 1024), name="big%d.png" % i)
           for i in range(8)]
    form = classify(app, big + pngs(2))
    assert app.alerts == []
    assert form.status_label.text == "10 classified and saved to the history, 0 rejected"
    assert [r["index"] for r in form.results_panel.items] == list(range(10))
    assert [r["image"] for r in form.results_panel.items] == big + form.file_loader.files[8:]


# ---- every form, its item templates and handlers, on what the server really sends


def test_every_form_reads_only_what_the_server_sends(app, worker):
    main = app.forms["Main"]()
    assert main.user_label.text == "ada@lab.org" and main.admin_link.visible
    for page in ("classify", "history", "summary", "models", "admin"):
        main.show_page(page)
    assert app.alerts == []

    files = pngs(3) + pngs(1, 10, b"NOCELL") + [anvil.BlobMedia("image/png", b"\x89PNG\r\n\x1a\nBAD", name="b.png"),
                                               anvil.BlobMedia("text/plain", b"x", name="notes.txt")]
    form = classify(app, files)
    assert form.status_label.text == "4 classified and saved to the history, 2 rejected"
    cards = form.results_panel.get_components()
    assert cards[3].condition_label.text.startswith("No cell found")
    assert cards[4].error_label.text == "Rejected: The image data is corrupt"
    cards[0].gradcam_button_click()
    assert cards[0].gradcam_image.source.content_type == "image/png" and app.alerts == []

    history = app.forms["History"]()
    assert history.page_label.text == "Page 1 of 1 (4 predictions)"
    assert [c for _, c in history.condition_dropdown.items] == ["astro", "oligo", "rashh", "nt3"]
    row = history.history_rows.get_components()[0]
    row.view_link_click()
    (detail,) = app.alerts
    assert detail.meta_label.text.startswith(detail.item["created"].strftime("%Y-%m-%d %H:%M UTC by ada@lab.org"))
    real_call, seen = app.call, []

    def failing(name, *args, **kwargs):  # the button is off while the call runs (no second click)
        seen.append(detail.gradcam_button.enabled)
        raise RuntimeError("the prediction service is not available")

    app.call = failing
    detail.gradcam_button_click()
    assert seen == [False] and detail.gradcam_button.enabled and not detail.gradcam_image.visible
    assert app.alerts[-1] == "Grad-CAM is not available: the prediction service is not available"
    app.call = real_call
    detail.gradcam_button_click()
    assert detail.gradcam_image.visible and detail.gradcam_note.visible and not detail.gradcam_button.visible
    app.alerts.clear()
    history.export_button_click()
    (download,) = app.alerts
    assert download[0] == "download" and download[1].content_type == "text/csv"
    app.alerts.clear()

    summary = app.forms["ExperimentSummary"]()
    summary.experiment_box.text = "E1"
    summary.summarise_button_click()
    assert summary.summary_label.text == "E1: 3 cells classified by tiny-medium4 1.0.0 (left out of the shares: " \
                                         "1 no cell found)"
    assert len(summary.summary_rows.get_components()) == 4

    models = app.forms["Models"]()
    (card,) = models.models_panel.get_components()
    assert card.metrics_label.text.startswith("Held-out accuracy: 90.0%")

    admin = app.forms["Admin"]()
    bob = next(r for r in admin.users_panel.get_components() if r.item["email"] == "bob@lab.org")
    assert bob.enabled_check.checked is False
    bob.enabled_check.checked = True
    bob.enabled_check_change()
    assert app.alerts == []
    assert next(r for r in admin.users_panel.items if r["email"] == "bob@lab.org")["enabled"] is True


def test_with_no_worker_the_forms_open_and_say_so(app, worker):
    worker.fail = True
    classify_form = app.forms["Classify"]()
    assert classify_form.model_note_label.text.startswith("No prediction worker is connected")
    assert app.forms["Models"]().status_label.text.startswith("No prediction worker is connected")
    app.forms["History"]()
    form = classify(app, pngs(2))
    assert form.status_label.text == "0 classified and saved to the history, 2 rejected"
    assert all(c.error_label.text.startswith("Not classified (send it again)")
               for c in form.results_panel.get_components())
    assert app.alerts == []


def test_an_export_the_server_refuses_is_said_not_raised(app):
    classify(app, pngs(1))
    history = app.forms["History"]()
    history.date_from_picker.date, history.date_to_picker.date = dt.date(2030, 1, 2), dt.date(2030, 1, 1)
    history.export_button_click()
    (message,) = app.alerts
    assert message.startswith("Could not export the history: ") and "before" in message


def test_opening_a_prediction_deleted_meanwhile_is_said_not_raised(app):
    classify(app, pngs(1))
    history = app.forms["History"]()
    row = history.history_rows.get_components()[0]
    app.call("delete_prediction", row.item["id"])  # by someone else, in another tab
    row.view_link_click()
    (message,) = app.alerts
    assert message.startswith("Could not open this prediction: No prediction with id")


def test_deleting_the_last_row_of_the_last_page_shows_the_page_before(app):
    classify(app, pngs(26))
    history = app.forms["History"]()
    history.next_button_click()
    assert history.page_label.text == "Page 2 of 2 (26 predictions)"
    history.history_rows.get_components()[0].delete_link_click()
    assert history.page_label.text == "Page 1 of 1 (25 predictions)" and len(history.history_rows.items) == 25
    assert not history.next_button.enabled and not history.prev_button.enabled


def test_the_detail_view_says_when_grad_cam_used_another_model_version(app, worker):
    classify(app, pngs(1))
    history = app.forms["History"]()
    worker.model_version = "2.0.0"  # the worker was updated since the prediction
    history.history_rows.get_components()[0].view_link_click()
    (detail,) = app.alerts
    detail.gradcam_button_click()
    assert detail.gradcam_note.text == "Explained with model version 2.0.0; the prediction was made with version 1.0.0"


def test_a_prediction_is_tagged_afterwards_in_its_detail_view(app):
    classify(app, pngs(1), experiment="")
    history = app.forms["History"]()
    row = history.history_rows.get_components()[0]
    row.view_link_click()
    detail = app.alerts[-1]
    assert detail.edit_button.visible and not detail.edit_panel.visible
    detail.edit_button_click()
    detail.experiment_box.text = "x" * 201
    detail.save_button_click()
    assert app.alerts[-1].startswith("Not saved: experiment is too long") and detail.edit_panel.visible
    detail.experiment_box.text, detail.notes_box.text = " E-late ", "tagged afterwards"
    detail.save_button_click()
    assert "experiment E-late" in detail.meta_label.text and detail.notes_label.text == "tagged afterwards"
    assert not detail.edit_panel.visible
    assert app.call("get_prediction", row.item["id"])["experiment"] == "E-late"


# ---- the same with the real worker (a tiny trained model), and the test worker's shapes against it


@pytest.fixture(scope="module")
def service(tiny_model):
    from nscfate.predictor import Predictor
    from uplink.service import InferenceService

    s = InferenceService([Predictor.from_directory(tiny_model)])
    yield s
    s.close()


def real_worker(service):
    handlers = {"predict_cell_fate_batch": service.predict_batch, "predict_cell_fate": service.predict,
                "list_models": service.list_models}
    return lambda name, *args, **kwargs: handlers[name](*args, **kwargs)


def test_the_test_worker_answers_with_the_real_workers_fields(service):
    bad = anvil.BlobMedia("image/png", b"\x89PNG\r\n\x1a\nBAD", name="bad.png")
    good = anvil.BlobMedia("image/png", png_bytes(1, size=40), name="good.png")
    real = service.predict_batch([good, bad])
    fake = FakeWorker().predict_batch([good, bad])
    assert set(fake[0]) == set(real[0]) and set(fake[1]) == set(real[1])
    assert set(fake[1]["error"]) == set(real[1]["error"])
    assert set(FakeWorker().predict(good, explain=True)) == set(service.predict(good, explain=True))


def test_the_forms_on_the_real_worker(tmp_path, service):
    rt = make_runtime(tmp_path, real_worker(service))
    try:
        session = rt.accounts.create_session(rt.accounts.create_user("ann@lab.org", "correct horse battery"))
        app = anvilclient.client()
        app.call = lambda name, *args, **kwargs: rt.call(name, *args, session=session, **kwargs)
        (card,) = app.forms["Models"]().models_panel.get_components()
        assert card.plots_panel.get_components() and all(
            p.source.content_type == "image/png" for p in card.plots_panel.get_components())
        assert "SYNTHETIC" in card.trained_on_label.text and card.metrics_label.text.startswith("Held-out accuracy: ")
        files = [anvil.BlobMedia("image/png", png_bytes(i, size=40), name="c%d.png" % i) for i in range(3)]
        form = classify(app, files + [anvil.BlobMedia("image/png", b"\x89PNG\r\n\x1a\nxx", name="bad.png")])
        assert form.status_label.text == "3 classified and saved to the history, 1 rejected" and app.alerts == []
        cards = form.results_panel.get_components()
        assert "(model tiny-medium4 0.0.1)" in cards[0].confidence_label.text
        assert cards[3].error_label.text.startswith("Rejected: ")
        cards[0].gradcam_button_click()
        history = app.forms["History"]()
        history.history_rows.get_components()[0].view_link_click()
        (detail,) = app.alerts
        detail.gradcam_button_click()
        assert detail.gradcam_image.source.content_type == "image/png" and app.alerts == [detail]
    finally:
        rt.close()
        rt.db.dispose()
