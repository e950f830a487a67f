"""server_code/ through the local runtime and its real SQL tables, with a fake worker."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import sys
import tracemalloc

import anvil
import anvil.users
import pytest
import sqlalchemy as sa

from apphost.testing import FakeWorker, make_runtime, png_bytes

@pytest.fixture
def worker():
    return FakeWorker()


@pytest.fixture
def rt(tmp_path, worker, engine_url):  # engine_url (tests/conftest.py): SQLite, then PostgreSQL
    runtime = make_runtime(tmp_path, worker, db_url=engine_url)
    yield runtime
    runtime.close()
    runtime.db.dispose()


@pytest.fixture
def people(rt):
    """Sessions of a researcher, a second researcher and a lab admin."""
    out = {}
    for name, role in (("ann", "researcher"), ("bob", "researcher"), ("ada", "lab_admin")):
        user = rt.accounts.create_user(f"{name}@lab.org", "correct horse battery", role=role)
        out[name] = rt.accounts.create_session(user)
    return out


def images(n, start=0):
    return [anvil.BlobMedia("image/png", png_bytes(start + i), name=f"cell{start + i}.png") for i in range(n)]


def n_rows(rt):
    return rt.run(lambda: len(rt.db.app_tables.predictions.search()))


def module(rt, name):
    return sys.modules[f"{rt.package_name}.{name}"]


# ---- classification


def test_classify_requires_sign_in(rt):
    with pytest.raises(Exception) as e:
        rt.call("classify_cell_images", images(1))
    assert type(e.value).__name__ == "NotSignedIn"
    assert n_rows(rt) == 0


def test_classify_stores_one_row_per_success_and_reports_rejections(rt, people, worker):
    files = images(2) + [anvil.BlobMedia("text/plain", b"not an image", name="notes.txt"),
                         anvil.BlobMedia("image/png", b"\x89PNG\r\n\x1a\nBAD", name="broken.png"),
                         anvil.BlobMedia("image/png", b"", name="empty.png")]
    results = rt.call("classify_cell_images", files, experiment=" E1 ", notes="batch A", session=people["ann"])
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["ok"] for r in results] == [True, True, False, False, False]
    assert [r["error"]["code"] for r in results[2:]] == ["not_an_image", "corrupt", "empty"]
    assert worker.batch_sizes == [3]  # the text file and the empty one never reach the worker
    ok = results[0]
    assert ok["filename"] == "cell0.png" and ok["experiment"] == "E1" and ok["notes"] == "batch A"
    assert ok["predicted_class"] in ok["probabilities"] and ok["model"] == {"name": "tiny-medium4", "version": "1.0.0"}
    assert ok["user"] == "ann@lab.org" and ok["can_delete"] is True
    assert n_rows(rt) == 2

    def stored():
        row = rt.db.app_tables.predictions.get_by_id(ok["id"])
        return row["image"].get_bytes(), row["image_sha256"], row["class_names"], row["user"]["email"]

    data, sha, names, email = rt.run(stored)
    assert data == png_bytes(0) and len(sha) == 64
    assert names[:2] == [["astro", "Astrocyte medium"], ["oligo", "Oligodendrocyte medium"]]  # the model's order
    assert [c["key"] for c in ok["classes"]] == ["astro", "oligo", "rashh", "nt3"]
    assert email == "ann@lab.org"


def test_a_stored_prediction_that_cannot_be_read_back_is_still_reported_whole(rt, people, monkeypatch):
    normal = rt.call("classify_cell_images", images(1), session=people["ann"])[0]

    def broken(row, viewer):
        raise RuntimeError("read-back failed")

    monkeypatch.setattr(module(rt, "predictions"), "prediction_to_dict", broken)
    result = rt.call("classify_cell_images", images(1, start=1), session=people["ann"])[0]
    assert result["ok"] and n_rows(rt) == 2  # stored, and said so
    assert result.keys() == normal.keys()  # every field a result card reads
    assert (result["user"], result["model"], result["can_delete"]) == (normal["user"], normal["model"], True)
    assert result["filename"] == "cell1.png" and result["image_shown_as_stored"] is normal["image_shown_as_stored"] is True
    assert [c["key"] for c in result["classes"]] == [c["key"] for c in normal["classes"]]
    names = {c["key"]: c["display_name"] for c in normal["classes"]}
    assert result["predicted_display_name"] == names[result["predicted_class"]]


def test_worker_down_stores_nothing(rt, people, worker):
    worker.fail = True  # none connected: answered at once
    results = rt.call("classify_cell_images", images(3), session=people["ann"])
    assert {r["error"]["code"] for r in results} == {"worker_unavailable"}
    assert all(r["error"]["retry_later"] for r in results)  # the clients offer to send them again
    assert n_rows(rt) == 0


def _fake_time():
    now = [0.0]

    def sleep(s):
        now[0] += s

    return (lambda: now[0]), sleep, now


def test_worker_failing_mid_way_keeps_only_finished_chunks(rt, people, worker):
    worker.fail_after = 1  # it never comes back
    clock, sleep, now = _fake_time()
    predictions = module(rt, "predictions")
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    results = rt.run(predictions.classify_for_user, user, images(20), clock=clock, sleep=sleep)
    assert [r["ok"] for r in results] == [True] * 16 + [False] * 4
    assert {r["error"]["code"] for r in results[16:]} == {"worker_unavailable"}
    assert 12.5 <= now[0] < 15  # it was waited for, up to half the time budget
    assert n_rows(rt) == 16


def test_a_restarted_worker_gets_the_chunk(rt, people, worker, monkeypatch):
    """Killed during a call, the only worker is gone for a while (no function registered), then back."""
    clock, sleep, now = _fake_time()
    real = worker.predict_batch
    back_at = []

    def dies_once(images, model=None):
        if not back_at:
            back_at.append(now[0] + 8.0)  # the host restarts it in ~8 s
            raise anvil.server.UplinkDisconnectedError("Connection to Anvil Uplink server lost")
        if now[0] < back_at[0]:
            raise anvil.server.NoServerFunctionError('No server function matching "predict_cell_fate_batch"')
        return real(images, model=model)

    monkeypatch.setattr(worker, "predict_batch", dies_once)
    predictions = module(rt, "predictions")
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    results = rt.run(predictions.classify_for_user, user, images(3), clock=clock, sleep=sleep)
    assert all(r["ok"] for r in results) and n_rows(rt) == 3
    assert 8.0 <= now[0] < 10.5


def test_only_two_requests_wait_for_a_worker_at_a_time(rt, people, worker):
    """A worker gone for good must not tie up every thread of the server: a third request that finds
    two already waiting fails at once (retryable)."""
    worker.fail_after = 0
    predictions = module(rt, "predictions")
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    clock, sleep, now = _fake_time()
    for _ in range(2):
        assert predictions._WAITING_FOR_A_WORKER.acquire(blocking=False)
    try:
        results = rt.run(predictions.classify_for_user, user, images(2), clock=clock, sleep=sleep)
    finally:
        for _ in range(2):
            predictions._WAITING_FOR_A_WORKER.release()
    assert {r["error"]["code"] for r in results} == {"worker_unavailable"} and now[0] == 0.0
    results = rt.run(predictions.classify_for_user, user, images(2), clock=clock, sleep=sleep)
    assert now[0] >= 12.5  # with a free place it waits, as before


def test_no_worker_at_all_fails_at_once(rt, people, worker, monkeypatch):
    def none_registered(images, model=None):
        raise anvil.server.NoServerFunctionError('No server function matching "predict_cell_fate_batch"')

    monkeypatch.setattr(worker, "predict_batch", none_registered)
    clock, sleep, now = _fake_time()
    predictions = module(rt, "predictions")
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    results = rt.run(predictions.classify_for_user, user, images(2), clock=clock, sleep=sleep)
    assert {r["error"]["code"] for r in results} == {"worker_unavailable"} and now[0] == 0.0


def test_big_uploads_go_in_chunks(rt, people, worker):
    rt.call("classify_cell_images", images(40), session=people["ann"])
    assert worker.batch_sizes == [16, 16, 8]


def test_each_chunk_is_stored_with_one_commit(rt, people):
    """A chunk's rows go in one transaction (one commit, one disk sync), not one commit per image."""
    commits = []

    def count(conn):
        commits.append(conn)

    def n_commits(files):
        commits.clear()
        sa.event.listen(rt.db.engine, "commit", count)
        try:
            results = rt.call("classify_cell_images", files, session=people["ann"])
        finally:
            sa.event.remove(rt.db.engine, "commit", count)
        assert all(r["ok"] for r in results)
        return len(commits)

    one = n_commits(images(1))  # the call's own reads (session, user) commit too
    assert n_commits(images(40, start=1)) == one + 2  # chunks of 16, 16 and 8: two commits more than one image
    assert n_rows(rt) == 41


def test_time_budget_stops_before_the_30s_limit(rt, people, worker, monkeypatch):
    now = [0.0]
    slow_batch = worker.predict_batch

    def ten_seconds_per_batch(*args, **kwargs):
        now[0] += 10.0
        return slow_batch(*args, **kwargs)

    monkeypatch.setattr(worker, "predict_batch", ten_seconds_per_batch)
    predictions = module(rt, "predictions")
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    results = rt.run(predictions.classify_for_user, user, images(48), clock=lambda: now[0])
    assert worker.batch_sizes == [16, 16]
    assert [r["error"]["code"] for r in results[32:]] == ["not_processed"] * 16
    assert n_rows(rt) == 32


def test_time_budget_counts_the_time_storing_takes(rt, people, worker, monkeypatch):
    """Storing a chunk (16 images of up to 20 MB, one transaction) is part of what the next chunk costs."""
    now = [0.0]
    predictions = module(rt, "predictions")
    record = predictions._record_chunk

    def ten_seconds_to_store(*args, **kwargs):
        now[0] += 10.0
        return record(*args, **kwargs)

    monkeypatch.setattr(predictions, "_record_chunk", ten_seconds_to_store)
    user = rt.run(lambda: rt.accounts.session_user(people["ann"]))
    results = rt.run(predictions.classify_for_user, user, images(48), clock=lambda: now[0])
    assert worker.batch_sizes == [16, 16]  # a third chunk would end at 30 s, when Anvil kills the call
    assert [r["error"]["code"] for r in results[32:]] == ["not_processed"] * 16


def test_unknown_model_is_the_callers_error(rt, people):
    with pytest.raises(Exception) as e:
        rt.call("classify_cell_images", images(1), model="nope", session=people["ann"])
    assert type(e.value).__name__ == "InvalidRequest" and e.value.code == "unknown_model"
    assert n_rows(rt) == 0


def test_a_worker_refusing_the_model_midway_keeps_the_stored_chunks(rt, people, worker, monkeypatch):
    """Another worker (serving other models) answers the second chunk: the first chunk's predictions are
    stored and reported, the rest say why, so that resending only the rest duplicates nothing."""
    real = worker.predict_batch

    def second_call_elsewhere(images, model=None):
        if worker.batch_sizes:
            worker.model_name = "other-model"
        return real(images, model=model)

    monkeypatch.setattr(worker, "predict_batch", second_call_elsewhere)
    results = rt.call("classify_cell_images", images(20), model="tiny-medium4", session=people["ann"])
    assert [r["ok"] for r in results] == [True] * 16 + [False] * 4
    assert {r["error"]["code"] for r in results[16:]} == {"unknown_model"}
    assert "tiny-medium4" in results[16]["error"]["message"]
    assert n_rows(rt) == 16


def test_request_limits(rt, people, monkeypatch):
    uploads = module(rt, "uploads")
    with pytest.raises(Exception) as e:
        rt.call("classify_cell_images", images(uploads.MAX_FILES_PER_CALL + 1), session=people["ann"])
    assert e.value.code == "too_many_files"
    with pytest.raises(Exception) as e:
        rt.call("classify_cell_images", [], session=people["ann"])
    assert e.value.code == "no_files"
    with pytest.raises(Exception) as e:
        rt.call("classify_cell_images", images(1), experiment="x" * 201, session=people["ann"])
    assert e.value.code == "bad_experiment"
    monkeypatch.setattr(uploads, "MAX_BYTES_PER_FILE", 50)
    results = rt.call("classify_cell_images", images(1), session=people["ann"])
    assert results[0]["error"]["code"] == "too_many_bytes"
    assert n_rows(rt) == 0
    # just over the real limit: said in the limit's unit, with the bytes ("20.0 MB, the limit 20 MB" was not)
    monkeypatch.undo()
    assert uploads._too_big(21_000_000) == ("The file is 20.03 MiB (21,000,000 bytes); the limit is 20 MiB "
                                            "(20,971,520 bytes) per image")


def test_filenames_are_cleaned(rt, people):
    files = [anvil.BlobMedia("image/png", png_bytes(1), name="../../etc/\x00passwd.png")]
    assert rt.call("classify_cell_images", files, session=people["ann"])[0]["filename"] == "passwd.png"


# ---- history


def _seed_history(rt, people):
    """Six predictions over three days by ann and bob in two experiments."""
    rt.call("classify_cell_images", images(3, 0), experiment="E1", session=people["ann"])
    rt.call("classify_cell_images", images(3, 3), experiment="E2", session=people["bob"])

    def spread():
        rows = sorted(rt.db.app_tables.predictions.search(), key=lambda r: r["filename"])
        for i, row in enumerate(rows):
            row["created"] = dt.datetime(2024, 5, 1 + i // 2, 12, i, tzinfo=dt.timezone.utc)
        return [r.get_id() for r in rows]

    return rt.run(spread)


def test_search_pages_newest_first(rt, people):
    ids = _seed_history(rt, people)
    page0 = rt.call("search_predictions", None, 0, 4, session=people["ann"])
    page1 = rt.call("search_predictions", None, 1, 4, session=people["ann"])
    assert (page0["total"], page0["pages"], len(page0["rows"]), len(page1["rows"])) == (6, 2, 4, 2)
    assert [r["id"] for r in page0["rows"] + page1["rows"]] == list(reversed(ids))
    assert rt.call("search_predictions", None, 5, 4, session=people["ann"])["rows"] == []
    with pytest.raises(Exception) as e:
        rt.call("search_predictions", None, 0, 1000, session=people["ann"])
    assert e.value.code == "bad_page"


def test_search_filters(rt, people, worker):
    _seed_history(rt, people)

    def files(filters):
        page = rt.call("search_predictions", filters, 0, 50, session=people["ann"])
        return sorted(r["filename"] for r in page["rows"])

    assert files({"experiment": "E2"}) == ["cell3.png", "cell4.png", "cell5.png"]
    assert files({"user": "ANN@lab.org"}) == ["cell0.png", "cell1.png", "cell2.png"]
    assert files({"user": "nobody@lab.org"}) == []
    assert files({"user": "ann"}) == ["cell0.png", "cell1.png", "cell2.png"]  # part of an address
    assert files({"user": "@LAB.org"}) == [f"cell{i}.png" for i in range(6)]  # ann's and bob's
    assert files({"user": "zed"}) == []
    assert files({"date_from": "2024-05-02", "date_to": "2024-05-02"}) == ["cell2.png", "cell3.png"]
    assert files({"date_from": dt.date(2024, 5, 3)}) == ["cell4.png", "cell5.png"]
    everything = rt.call("search_predictions", None, 0, 50, session=people["ann"])["rows"]
    some_class = everything[0]["predicted_class"]
    expected = sorted(r["filename"] for r in everything if r["predicted_class"] == some_class)
    assert files({"condition": some_class}) == expected
    shown_as = everything[0]["predicted_display_name"]  # what the app shows, in any case, also finds them
    assert shown_as != some_class and files({"condition": shown_as.upper()}) == expected
    assert files({"condition": some_class.upper()}) == expected
    assert files({"condition": some_class[:-1] + "%"}) == []  # matched as typed, not as a LIKE pattern
    assert files({"condition": "no such condition"}) == []
    worker.fail = True  # the names come from the served models; without a worker the keys still work
    assert files({"condition": some_class}) == expected and files({"condition": shown_as}) == []
    for bad, code in (({"colour": "red"}, "bad_filters"), ({"date_from": "yesterday"}, "bad_date_from"),
                      ({"date_from": "2024-05-03", "date_to": "2024-05-01"}, "bad_date_range")):
        with pytest.raises(Exception) as e:
            rt.call("search_predictions", bad, 0, 10, session=people["ann"])
        assert e.value.code == code


def test_detail_includes_the_image(rt, people):
    result = rt.call("classify_cell_images", images(1), session=people["ann"])[0]
    detail = rt.call("get_prediction", result["id"], session=people["bob"])
    assert detail["image"].get_bytes() == png_bytes(0) and detail["can_delete"] is False
    with pytest.raises(Exception) as e:
        rt.call("get_prediction", "[1,1]", session=people["bob"])
    assert type(e.value).__name__ == "NotFound"


def test_image_preview_for_the_browser(rt, people):
    import numpy as np
    import tifffile
    from PIL import Image

    buf = io.BytesIO()
    tifffile.imwrite(buf, (1000 + np.arange(64, dtype=np.uint16).reshape(8, 8) * 7))  # 16-bit, as IFC exports
    tiff = anvil.BlobMedia("image/tiff", buf.getvalue(), name="cell.tif")
    png_result, tiff_result = rt.call("classify_cell_images", [images(1)[0], tiff], session=people["ann"])
    shown = rt.call("get_image_preview", tiff_result["id"], session=people["bob"])
    assert shown.content_type == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(shown.get_bytes())))
    assert pixels.shape == (8, 8) and pixels.min() == 0 and pixels.max() == 255  # contrast-stretched
    same = rt.call("get_image_preview", png_result["id"], session=people["ann"])
    assert same.content_type == "image/png" and same.get_bytes() == png_bytes(0)  # browsers show PNG as it is
    with pytest.raises(Exception) as e:
        rt.call("get_image_preview", tiff_result["id"])
    assert type(e.value).__name__ == "NotSignedIn"


def test_delete_permissions(rt, people):
    r1, r2 = rt.call("classify_cell_images", images(2), session=people["ann"])
    image_path = rt.run(lambda: rt.db.media.path(rt.db.app_tables.predictions.get_by_id(r1["id"])["image_sha256"]))
    with pytest.raises(Exception) as e:
        rt.call("delete_prediction", r1["id"], session=people["bob"])  # another researcher
    assert type(e.value).__name__ == "Forbidden"
    assert rt.call("delete_prediction", r1["id"], session=people["ann"]) is True  # the owner
    assert not image_path.exists()
    assert rt.call("delete_prediction", r2["id"], session=people["ada"]) is True  # a lab admin
    assert n_rows(rt) == 0
    with pytest.raises(Exception) as e:
        rt.call("delete_prediction", r2["id"], session=people["ada"])
    assert type(e.value).__name__ == "NotFound"


def test_experiment_and_notes_can_be_changed_by_the_owner_or_a_lab_admin(rt, people):
    """A batch classified before its experiment was typed: tagged afterwards, and counted there."""
    r1, r2 = rt.call("classify_cell_images", images(2), notes="plate 2", session=people["ann"])
    assert r1["can_edit"] and not rt.call("get_prediction", r1["id"], session=people["bob"])["can_edit"]
    with pytest.raises(Exception) as e:
        rt.call("update_prediction", r1["id"], experiment="E-late", session=people["bob"])  # another researcher
    assert type(e.value).__name__ == "Forbidden"
    changed = rt.call("update_prediction", r1["id"], experiment="  E-late ", session=people["ann"])
    assert (changed["experiment"], changed["notes"]) == ("E-late", "plate 2")  # only what was sent changes
    assert changed["predicted_class"] == r1["predicted_class"] and changed["probabilities"] == r1["probabilities"]
    rt.call("update_prediction", r2["id"], experiment="E-late", notes=None, session=people["ada"])  # a lab admin
    assert rt.call("get_prediction", r2["id"], session=people["ann"])["notes"] is None  # null clears
    assert rt.call("experiment_summary", "E-late", session=people["bob"])["n_cells"] == 2
    for changes, code in (({}, "bad_prediction_change"), ({"predicted_class": "astro"}, "bad_prediction_change"),
                          ({"experiment": "x" * 201}, "bad_experiment"), ({"notes": 5}, "bad_notes")):
        with pytest.raises(Exception) as e:
            rt.call("update_prediction", r1["id"], session=people["ann"], **changes)
        assert e.value.code == code, changes
    assert rt.call("get_prediction", r1["id"], session=people["ann"])["experiment"] == "E-late"


def test_csv_export(rt, people):
    rt.call("classify_cell_images", images(2), experiment="E1", notes="=HYPERLINK(\"x\")", session=people["ann"])
    media = rt.call("export_predictions_csv", {"experiment": "E1"}, session=people["bob"])
    assert media.content_type == "text/csv" and media.name.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(media.get_bytes().decode("utf-8"))))
    assert len(rows) == 2
    assert set(rows[0]) >= {"id", "created_utc", "user", "filename", "predicted_class", "confidence",
                            "p_astro", "p_oligo", "p_rashh", "p_nt3"}
    assert rows[0]["user"] == "ann@lab.org" and rows[0]["experiment"] == "E1"
    assert rows[0]["notes"].startswith("'=")  # never a live spreadsheet formula
    probs = [float(rows[0]["p_" + k]) for k in ("astro", "oligo", "rashh", "nt3")]
    assert abs(sum(probs) - 1.0) < 1e-6 and float(rows[0]["confidence"]) == max(probs)
    assert rt.call("export_predictions_csv", {"experiment": "none"}, session=people["bob"]).get_bytes().count(b"\n") == 1


@contextlib.contextmanager
def selects(rt):
    """The SELECT statements (text, parameters) the runtime's database runs inside the block."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(rt.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(rt.db.engine, "before_cursor_execute", record)


def test_history_filters_read_only_the_matching_rows(rt, people):
    if not rt.db.is_sqlite:
        pytest.skip("SQLite's query plans (PostgreSQL's planner chooses by the table's statistics)")
    _seed_history(rt, people)
    condition = rt.call("search_predictions", None, 0, 1, session=people["ann"])["rows"][0]["predicted_class"]
    for filters in ({}, {"experiment": "E1"}, {"condition": condition}, {"user": "ann@lab.org"},
                    {"user": "lab.org"}, {"model": "tiny-medium4"}, {"date_from": "2024-05-02"}):
        with selects(rt) as sql:
            rt.call("search_predictions", filters, 1, 1, session=people["ann"])
        with rt.db.engine.connect() as conn:
            plans = [[r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p)]
                     for s, p in sql if "FROM app_predictions" in s]
        assert len(plans) == 2, (filters, plans)  # the count and the page
        for plan in plans:  # through an index (no reading of every row), the page without sorting the matches
            assert not any(step == "SCAN app_predictions" for step in plan), (filters, plan)
            assert filters.get("user") == "lab.org" or not any("TEMP B-TREE" in step for step in plan), (filters, plan)


def _more_like(rt, row_id, n, emails):
    """``n`` more history rows like ``row_id``'s (its image too), by the users of ``emails`` in turn, in
    one transaction: a long history in a moment."""
    def add():
        table = rt.db.app_tables.predictions
        values = dict(table.get_by_id(row_id).items())
        users = [rt.db.app_tables.users.get(email=e) for e in emails]
        with anvil.tables.Transaction():
            for i in range(n):
                table.add_row(**dict(values, filename=f"more{i}.png", user=users[i % len(users)]))

    rt.run(add)


def test_csv_export_reads_the_users_with_each_page_of_rows_and_no_images(rt, people, monkeypatch):
    monkeypatch.setattr("apphost.tables._PAGE", 20)
    first = rt.call("classify_cell_images", images(1), experiment="E1", session=people["ann"])[0]
    _more_like(rt, first["id"], 40, ["ann@lab.org", "bob@lab.org"])
    with selects(rt) as sql:
        data = rt.run(lambda: module(rt, "predictions").history_csv({"experiment": "E1"}))
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert len(rows) == 41 and {r["user"] for r in rows} == {"ann@lab.org", "bob@lab.org"}
    # the users of each page of 20 rows in one query (the second pass), not one query per row
    assert len([s for s, _ in sql if "FROM app_users" in s]) == 3
    reads = [s.split("FROM")[0] for s, _ in sql if "FROM app_predictions" in s and "count(" not in s]
    assert reads and not any("app_predictions.image," in r for r in reads), reads  # the CSV has no image
    assert "app_predictions.filename" not in reads[0]  # the first pass reads only the classes


def test_a_history_page_reads_its_users_in_one_query(rt, people):
    first = rt.call("classify_cell_images", images(1), experiment="E1", session=people["ann"])[0]
    _more_like(rt, first["id"], 60, ["ann@lab.org", "bob@lab.org"])
    predictions = module(rt, "predictions")

    def page():
        return predictions.search_history(rt.db.app_tables.users.get(email="bob@lab.org"), {"experiment": "E1"},
                                          page=0, page_size=50)
    with selects(rt) as sql:
        got = rt.run(page)
    assert got["total"] == 61 and len(got["rows"]) == 50
    assert {r["user"] for r in got["rows"]} == {"ann@lab.org", "bob@lab.org"}
    assert {r["can_delete"] for r in got["rows"] if r["user"] == "bob@lab.org"} == {True}
    assert {r["can_delete"] for r in got["rows"] if r["user"] == "ann@lab.org"} == {False}
    # the viewer, then the page's users with the page: one query each, not one per row (200 on a page of 200)
    assert len([s for s, _ in sql if "FROM app_users" in s]) == 2


def test_csv_export_holds_no_more_than_a_page_of_rows(rt, people, monkeypatch):
    monkeypatch.setattr("apphost.tables._PAGE", 20)
    first = rt.call("classify_cell_images", images(1), experiment="E1", session=people["ann"])[0]
    _more_like(rt, first["id"], 1499, ["ann@lab.org"])

    def export():
        return module(rt, "predictions").history_csv(None)

    rt.run(export)  # imports and compiled statements are not the export's
    tracemalloc.start()
    try:
        data = rt.run(export)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.count(b"\n") == 1501
    # the CSV itself and a page of rows at a time; all the rows at once took 20 times the CSV's size
    assert peak < 4 * len(data), (peak, len(data))


# ---- summary, models, explanations


def test_wilson_interval_values(rt):
    stats = module(rt, "stats")
    low, high = stats.wilson_interval(5, 10)
    assert round(low, 4) == 0.2366 and round(high, 4) == 0.7634
    assert stats.wilson_interval(0, 20)[0] == 0.0 and stats.wilson_interval(20, 20)[1] == 1.0
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def test_experiment_summary(rt, people):
    results = rt.call("classify_cell_images", images(10), experiment="E9", session=people["ann"])
    rt.call("classify_cell_images", images(3, 50), experiment="other", session=people["ann"])
    summary = rt.call("experiment_summary", "E9", session=people["bob"])
    assert summary["n_cells"] == 10 and len(summary["models"]) == 1
    conditions = summary["models"][0]["conditions"]
    assert [c["key"] for c in conditions] == ["astro", "oligo", "rashh", "nt3"]  # the model's class order
    counts = {c["key"]: c["count"] for c in conditions}
    for key in counts:
        assert counts[key] == sum(1 for r in results if r["predicted_class"] == key)
    stats = module(rt, "stats")
    for c in conditions:
        assert (c["low"], c["high"]) == stats.wilson_interval(c["count"], 10)
        assert c["low"] <= c["share"] <= c["high"]
    assert abs(sum(c["share"] for c in conditions) - 1.0) < 1e-9
    # an image with no cell in it is not a cell: left out of the shares, and counted as such
    blank = anvil.BlobMedia("image/png", png_bytes(99) + b"NOCELL", name="blank.png")
    (stored,) = rt.call("classify_cell_images", [blank], experiment="E9", session=people["ann"])
    assert stored["ok"] and stored["no_cell"] and stored["flags"] == stored["warnings"]  # read once, on the server
    assert not any(r["no_cell"] or r["flags"] for r in results if "colour" in " ".join(r["warnings"]))
    again = rt.call("experiment_summary", "E9", session=people["bob"])
    assert again["n_cells"] == 10 and again["n_left_out"] == 1
    assert again["models"][0]["left_out"] == {"no cell found": 1}
    assert again["models"][0]["conditions"] == conditions
    # the same images again (a double drop, a re-upload): the same cells, counted once, their repeats said
    rt.call("classify_cell_images", images(3) + [blank], experiment="E9", session=people["bob"])
    repeated = rt.call("experiment_summary", "E9", session=people["bob"])
    assert (repeated["n_cells"], repeated["n_left_out"], repeated["n_repeats"]) == (10, 1, 4)
    assert repeated["models"][0]["conditions"] == conditions and repeated["models"][0]["repeats"] == 4
    assert repeated["models"][0]["left_out"] == {"no cell found": 1}
    predictions = module(rt, "predictions")
    assert predictions._not_a_cell(["does not look like a single cell: 3 similar objects"]) == "not a single cell"
    assert predictions._not_a_cell(["does not look like a single-cell crop: the object fills the whole image",
                                    "low confidence: ..."]) is None  # a big cell is still a cell
    with pytest.raises(Exception) as e:
        rt.call("experiment_summary", "  ", session=people["bob"])
    assert e.value.code == "bad_experiment"


def test_summary_counts_a_cell_classified_by_two_models_once_at_the_top(rt, people, worker):
    rt.call("classify_cell_images", images(5), experiment="E2m", session=people["ann"])
    worker.model_name = "other-model"
    rt.call("classify_cell_images", images(3, 3), experiment="E2m", session=people["ann"])  # 2 of the 5 again
    summary = rt.call("experiment_summary", "E2m", session=people["ann"])
    assert [(m["model"]["name"], m["n_cells"], m["repeats"]) for m in summary["models"]] == [
        ("tiny-medium4", 5, 0), ("other-model", 3, 0)]
    assert (summary["n_cells"], summary["n_repeats"]) == (6, 0)  # distinct images: cells 0-5


def test_models_passthrough_and_worker_down(rt, people, worker):
    assert rt.call("get_model_cards", session=people["ann"])[0]["name"] == "tiny-medium4"
    # the plot images only for the Models page, not for every model picker
    assert [kw for name, _, kw in worker.calls if name == "list_models"] == [{"plots": False}]
    rt.call("get_model_cards", plots=True, session=people["ann"])
    assert worker.calls[-1][2] == {"plots": True}
    worker.fail = True
    with pytest.raises(Exception) as e:
        rt.call("get_model_cards", session=people["ann"])
    assert type(e.value).__name__ == "WorkerUnavailable"


def test_explain_prediction(rt, people, worker):
    result = rt.call("classify_cell_images", images(1), session=people["ann"])[0]
    out = rt.call("explain_prediction", result["id"], session=people["ann"])
    assert out["gradcam"].get_bytes().startswith(b"\x89PNG") and out["note"] is None
    name, args, kwargs = worker.calls[-1]
    assert name == "predict_cell_fate" and kwargs == {"model": "tiny-medium4", "explain": True}
    assert args[0].get_bytes() == png_bytes(0)  # the stored image is what gets explained


# ---- roles


def test_session_info_and_user_admin(rt, people):
    assert rt.call("get_session_info") is None
    assert rt.call("get_session_info", session=people["ann"]) == {
        "email": "ann@lab.org", "role": "researcher", "is_lab_admin": False}
    with pytest.raises(Exception) as e:
        rt.call("list_users", session=people["ann"])
    assert type(e.value).__name__ == "Forbidden"
    pending = rt.accounts.signup("new@lab.org", "another good password")
    users = rt.call("list_users", session=people["ada"])
    assert users[0]["email"] == "new@lab.org" and users[0]["enabled"] is False
    rt.call("set_user_enabled", pending.get_id(), True, session=people["ada"])
    rt.call("set_user_role", pending.get_id(), "lab_admin", session=people["ada"])
    assert rt.run(lambda: rt.db.app_tables.users.get(email="new@lab.org")["role"]) == "lab_admin"
    with pytest.raises(Exception) as e:
        rt.call("set_user_role", pending.get_id(), "boss", session=people["ada"])
    assert e.value.code == "bad_role"


def test_two_admins_demoting_each_other_at_once_leave_one(rt, people, monkeypatch):
    """The check that another enabled lab admin remains and the write are one transaction: without it
    both checks pass (each sees the other) and then both writes leave the lab without an admin."""
    import threading

    eve = rt.accounts.create_user("eve@lab.org", "correct horse battery", role="lab_admin")
    sessions = {"ada": people["ada"], "eve": rt.accounts.create_session(eve)}
    ids = {u["email"].split("@")[0]: u["id"] for u in rt.call("list_users", session=people["ada"])}
    access = module(rt, "access")
    checked = threading.Barrier(2, timeout=1.5)
    real = access._other_enabled_admins

    def check_then_wait(user):
        others = real(user)
        try:
            checked.wait()  # both checks done before either writes, if nothing serialises them
        except threading.BrokenBarrierError:
            pass  # the other one waits for this transaction to end
        return others

    monkeypatch.setattr(access, "_other_enabled_admins", check_then_wait)
    outcomes = {}

    def demote(who, whom):
        try:
            outcomes[who] = rt.call("set_user_role", ids[whom], "researcher", session=sessions[who])["role"]
        except Exception as e:
            outcomes[who] = getattr(e, "code", repr(e))

    threads = [threading.Thread(target=demote, args=pair) for pair in (("ada", "eve"), ("eve", "ada"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes.values()) == ["last_admin", "researcher"], outcomes
    roles = [u["role"] for u in rt.call("list_users", session=people["ada"] if outcomes["ada"] == "researcher"
                                        else sessions["eve"]) if u["email"] in ("ada@lab.org", "eve@lab.org")]
    assert sorted(roles) == ["lab_admin", "researcher"]


def test_the_last_lab_admin_stays(rt, people):
    ada_id = rt.call("list_users", session=people["ada"])
    ada_id = next(u["id"] for u in ada_id if u["email"] == "ada@lab.org")
    for call, arg in (("set_user_role", "researcher"), ("set_user_enabled", False)):
        with pytest.raises(Exception) as e:
            rt.call(call, ada_id, arg, session=people["ada"])
        assert e.value.code == "last_admin"


def test_tiff_previews_look_like_what_the_model_saw(rt):
    """Min-is-white and plane-by-plane TIFFs are turned round as the worker's decoder turns them."""
    import io

    import numpy as np
    import tifffile
    from PIL import Image

    previews = module(rt, "previews")

    def shown(**kwargs):
        data = kwargs.pop("data")
        buf = io.BytesIO()
        tifffile.imwrite(buf, data, **kwargs)
        png, kind = previews.preview(anvil.BlobMedia("image/tiff", buf.getvalue(), name="c.tif"))
        assert kind == "image/png"
        return np.asarray(Image.open(io.BytesIO(png)))

    grey = (np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 13) % 4000
    np.testing.assert_array_equal(shown(data=np.iinfo(np.uint16).max - grey, photometric="miniswhite"),
                                  shown(data=grey, photometric="minisblack"))
    bits = grey > 2000
    np.testing.assert_array_equal(shown(data=~bits, photometric="miniswhite"), shown(data=bits, photometric="minisblack"))
    rgb = np.stack([grey, grey // 2, grey // 3], axis=-1)
    np.testing.assert_array_equal(shown(data=np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"),
                                  shown(data=rgb, photometric="rgb"))


def test_a_stored_prediction_that_cannot_be_read_back_is_still_reported(rt, people, monkeypatch):
    access = module(rt, "access")
    real = access.can_delete
    calls = []

    def failing_once(viewer, row):
        calls.append(row)
        if len(calls) == 1:
            raise RuntimeError("database went away for a moment")
        return real(viewer, row)

    monkeypatch.setattr(access, "can_delete", failing_once)
    (result,) = rt.call("classify_cell_images", images(1), experiment="E", session=people["ann"])
    assert result["ok"] and n_rows(rt) == 1
    again = rt.call("get_prediction", result["id"], session=people["ann"])
    for key in ("id", "user", "filename", "image_sha256", "model", "predicted_class", "predicted_display_name",
                "confidence", "probabilities", "classes", "warnings", "experiment", "notes", "can_delete"):
        assert result[key] == again[key], key  # what was written is what a read gives


def test_a_disabled_account_loses_its_open_sessions_as_on_anvil(rt, people, monkeypatch):
    """On Anvil, get_user() returns a session's account without looking at ``enabled`` (the local host
    checks it itself, which hid this): the server code refuses a disabled account in its own right."""
    ann = rt.run(lambda: rt.db.app_tables.users.get(email="ann@lab.org"))
    rt.run(lambda: ann.update(enabled=False))
    monkeypatch.setattr(anvil.users, "get_user", lambda *a, **k: ann)  # Anvil's answer for her open session
    with pytest.raises(Exception) as e:
        rt.call("search_predictions", None, 0, 10, session=people["ann"])
    assert type(e.value).__name__ == "NotSignedIn"
    endpoint = rt.find_endpoint("/predictions")
    out = rt.handle_http(endpoint, method="GET", path="/predictions", query_params={}, form_params={}, origin="",
                         headers={}, remote_address="127.0.0.1", body=None, username=None, password=None,
                         session=people["ann"])
    assert out["status"] == 401


def test_a_multipart_upload_handed_over_whole_is_read_as_on_anvil(rt, people):
    """Anvil passes a multipart/form-data body to an HTTP endpoint whole (its form_params are the
    url-encoded fields): the REST API reads the files and fields from it."""
    import httpx

    files = [("file", (f"cell{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    request = httpx.Request("POST", "http://host/_/api/predictions", files=files, data={"experiment": "E9"})
    body = anvil.BlobMedia(request.headers["content-type"], request.read())
    endpoint = rt.find_endpoint("/predictions")
    out = rt.handle_http(endpoint, method="POST", path="/predictions", query_params={}, form_params={}, origin="",
                         headers={}, remote_address="127.0.0.1", body=body, username=None, password=None,
                         session=people["ann"])
    assert out["status"] == 200
    stored = rt.call("search_predictions", {"experiment": "E9"}, 0, 10, session=people["ann"])["rows"]
    assert sorted(r["filename"] for r in stored) == ["cell0.png", "cell1.png", "cell2.png"]
