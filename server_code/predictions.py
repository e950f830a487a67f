"""Classify cell images through the uplink worker and keep the lab's prediction history.

One path for a prediction: validate here, forward to the worker with
``anvil.server.call("predict_cell_fate_batch", ...)``, then write one history row per image the
worker classified (never for a rejected image or a failed call). Big uploads are sent in chunks and
stop before Anvil's 30 s server-call limit; files not reached are returned as "send again".

The history is shared by the lab: every signed-in user can search it; only the owner of a prediction
or a lab admin can delete it.
"""

import csv
import datetime as dt
import errno
import io
import logging
import threading
import time

import anvil
import anvil.server
import anvil.tables.query as q
from anvil.tables import app_tables, order_by

from . import access, errors, previews, stats, uploads

log = logging.getLogger(__name__)

CHUNK_SIZE = 16  # images per worker call
TIME_BUDGET_S = 25.0  # stop sending chunks before Anvil kills the call at 30 s
MAX_PREVIEWS_PER_CALL = 64  # each is at most a 256-pixel PNG
MAX_PAGE_SIZE = 200
WORKER_USER_ERRORS = ("UnknownModelError",)  # worker exception types that are the caller's fault
# The worker went away mid-call or is shutting down: another worker (or a restarted one) may answer. A
# chunk is sent again while waiting for one - no row is written before the worker answers, so sending
# again cannot duplicate one.
RETRYABLE_WORKER_ERRORS = ("UplinkDisconnectedError", "WorkerUnavailableError")
# At most this many requests of this server process wait for a worker at a time; others fail at once
# (a worker gone for good must not tie up the threads every other request needs). It holds where
# server calls share a process (the local host; Anvil with Persistent Server); on Anvil without it each
# call has a process of its own and only the time budget bounds the wait.
_WAITING_FOR_A_WORKER = threading.BoundedSemaphore(2)


# --------------------------------------------------------------------------------------------------
# Classification


@anvil.server.callable
def classify_cell_images(files, experiment=None, notes=None, model=None):
    """Classify uploaded cell images; returns one result per file, in order (rejections included).

    Each result has ``ok``; successful ones carry the stored prediction (``id``, ``predicted_class``,
    ``confidence``, ``probabilities``, ...), rejected ones an ``error`` with ``code`` and ``message``.
    """
    return classify_for_user(access.require_user(), files, experiment, notes, model)


def classify_for_user(user, files, experiment=None, notes=None, model=None, clock=time.monotonic, sleep=time.sleep):
    """classify_cell_images for a given user (also used by the REST API)."""
    started = clock()
    experiment = uploads.clean_text(experiment, "experiment", uploads.MAX_EXPERIMENT_CHARS)
    notes = uploads.clean_text(notes, "notes", uploads.MAX_NOTES_CHARS)
    model = uploads.clean_text(model, "model", 200)
    accepted, rejected = uploads.check_files(files)
    results = {r["index"]: r for r in rejected}
    slowest_chunk = 0.0
    chunks = [accepted[i:i + CHUNK_SIZE] for i in range(0, len(accepted), CHUNK_SIZE)]
    for n, chunk in enumerate(chunks):
        elapsed = clock() - started
        if n > 0 and elapsed + slowest_chunk > TIME_BUDGET_S:
            for f in (f for rest in chunks[n:] for f in rest):
                results[f.index] = uploads.rejection(
                    f.index, f.filename, "not_processed",
                    "Not classified: this request reached the %d s time limit; send this file again"
                    % int(TIME_BUDGET_S))
            break
        t0 = clock()
        try:
            outputs = _predict_chunk(chunk, model, may_retry=lambda: clock() - started < TIME_BUDGET_S / 2,
                                     sleep=sleep)
        except errors.AppError as e:
            if n == 0:
                raise  # nothing stored yet: the request itself is wrong (e.g. an unknown model)
            # Chunks before this one are stored: report them, and this error for the rest (a worker
            # serving other models took over, say), so that resending does not duplicate them.
            _reject_rest(results, chunks[n:], e.code, str(e))
            break
        except Exception as e:  # the worker is down, timed out or failed: nothing is stored
            log.warning("prediction worker failed: %s", type(e).__name__)
            _reject_rest(results, chunks[n:], "worker_unavailable",
                         "The prediction service is not available right now (%s); nothing was stored for "
                         "this file, send it again" % type(e).__name__)
            break
        try:
            results.update(_record_chunk(user, chunk, outputs, experiment, notes))
        except _NotStored as e:  # the database or the media store failed: stop, the rest would fail too
            _reject_rest(results, chunks[n:], e.code, e.message)
            break
        # a chunk's cost includes storing it (up to 16 images of 20 MB in one add_rows)
        slowest_chunk = max(slowest_chunk, clock() - t0)
    return [results[i] for i in sorted(results)]


class _NotStored(Exception):
    """Storing a prediction failed; nothing of that file was kept."""

    def __init__(self, cause):
        super().__init__(str(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            self.code = "storage_full"
            self.message = ("The server's disk is full, so this prediction could not be saved; nothing was stored "
                            "for this file. Ask the lab admin to free space, then send it again")
        else:
            self.code = "storage_unavailable"
            self.message = ("The history could not be saved right now (%s); nothing was stored for this file, "
                            "send it again" % type(cause).__name__)


def _reject_rest(results, chunks, code, message):
    for f in (f for rest in chunks for f in rest):
        results[f.index] = uploads.rejection(f.index, f.filename, code, message)


def _error_type(e):
    """The exception's Anvil type name without its prefix (e.g. ``WorkerUnavailableError``)."""
    type_name = (getattr(e, "error_obj", None) or {}).get("type") or type(e).__name__
    return type_name.rsplit(".", 1)[-1]


def _predict_chunk(chunk, model, may_retry=lambda: True, sleep=time.sleep):
    """The worker's answers for one chunk. A worker that goes away during the call (killed, restarting)
    is waited for while ``may_retry()``: the chunk goes to another worker or to the restarted one (the
    local host restarts a dead worker within seconds), rather than failing at once."""
    delay, waiting = 0.25, False
    try:
        while True:
            try:
                outputs = anvil.server.call("predict_cell_fate_batch", [f.media() for f in chunk], model=model)
                break
            except Exception as e:
                kind = _error_type(e)
                if kind in WORKER_USER_ERRORS:
                    raise errors.InvalidRequest(str(e) or "Unknown model %r" % model, code="unknown_model")
                # once one went away, "no worker registered" means it is being restarted
                may_wait = kind in RETRYABLE_WORKER_ERRORS or (waiting and kind == "NoServerFunctionError")
                if may_wait and not waiting:
                    waiting = _WAITING_FOR_A_WORKER.acquire(blocking=False)
                if not (may_wait and waiting and may_retry()):
                    raise
                log.info("prediction worker went away (%s); trying again in %.2f s", kind, delay)
                sleep(delay)
                delay = min(2 * delay, 2.0)
    finally:
        if waiting:
            _WAITING_FOR_A_WORKER.release()
    if not isinstance(outputs, list) or len(outputs) != len(chunk):
        raise ValueError("the worker returned %r results for %d images" % (
            len(outputs) if isinstance(outputs, list) else type(outputs).__name__, len(chunk)))
    return outputs


def _record_chunk(user, chunk, outputs, experiment, notes):
    """Store a chunk's predictions as history rows with one ``add_rows``: one INSERT and one commit (one
    disk sync) for the chunk instead of one per image. All or none: if any row fails, none of the chunk
    is stored. Only valid predictions are stored; the worker's refusals are reported as they are."""
    results, to_store = {}, []
    for f, out in zip(chunk, outputs):
        refused = _refusal(f, out)
        if refused is not None:
            results[f.index] = refused
        else:
            to_store.append((f, _prediction_values(user, f, out, experiment, notes)))
    if not to_store:
        return results
    try:
        rows = app_tables.predictions.add_rows([values for _, values in to_store])
    except Exception as e:  # the INSERT, the commit or an image file failed: nothing of the chunk is kept
        log.exception("could not store a chunk of predictions")
        raise _NotStored(e)
    for (f, values), row in zip(to_store, rows):
        try:
            result = prediction_to_dict(row, user)
        except Exception:  # stored, but reading it back failed: still report it as stored
            log.exception("stored prediction %s could not be read back", row.get_id())
            # the same fields from what was written, so the caller's result card still works
            result = _as_dict(row.get_id(), values, can_delete=True,
                              shown_as_stored=previews.browser_shows(f.content_type))
        result.update(index=f.index, ok=True)
        results[f.index] = result
    return results


def _refusal(f, out):
    """The rejection to report for a worker result that is not a prediction to store (None: it is one)."""
    if isinstance(out, dict) and isinstance(out.get("error"), dict):
        err = out["error"]
        return uploads.rejection(f.index, f.filename, str(err.get("code") or "bad_image"),
                                 str(err.get("message") or "The image could not be used"))
    if not _is_prediction(out):
        log.warning("worker returned an unusable result for one image")
        return uploads.rejection(f.index, f.filename, "bad_worker_response",
                                 "The prediction service returned an unusable result; nothing was stored")
    return None


def _prediction_values(user, f, out, experiment, notes):
    """The column values of the history row for one worker result (a valid prediction)."""
    model = out.get("model") or {}
    # [key, display name] pairs in the model's order: a dict's key order does not survive Anvil's tables
    class_names = [[str(c["key"]), str(c.get("display_name") or c["key"])] for c in out.get("classes") or []
                   if isinstance(c, dict) and "key" in c]
    return dict(
        created=dt.datetime.now(dt.timezone.utc),
        user=user,
        filename=f.filename,
        image=f.media(),
        image_sha256=f.sha256,
        model_name=str(model.get("name") or ""),
        model_version=str(model.get("version") or ""),
        predicted_class=out["predicted_class"],
        confidence=float(out["confidence"]),
        probabilities={k: float(v) for k, v in out["probabilities"].items()},
        class_names=class_names,
        warnings=[str(w) for w in out.get("warnings") or []],
        experiment=experiment,
        notes=notes,
    )


def _is_prediction(out):
    if not isinstance(out, dict) or not isinstance(out.get("predicted_class"), str):
        return False
    probs = out.get("probabilities")
    conf = out.get("confidence")
    return (isinstance(probs, dict) and probs and isinstance(conf, (int, float)) and not isinstance(conf, bool)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in probs.values()))


# --------------------------------------------------------------------------------------------------
# History


# What the worker's warnings (their start) say about a prediction - the one place that reads them; the
# clients use the fields _as_dict derives. Decoding notes (a colour image converted to grey, a
# min-is-white TIFF inverted) are neither.
#: About the prediction itself: the row is flagged in lists.
NO_CELL = "no cell found"
FLAG_WARNINGS = (NO_CELL, "does not look like", "low confidence", "image is ")
#: The image is not one cell: left out of the experiment summary's shares, for this reason.
NOT_A_CELL_WARNINGS = ((NO_CELL, NO_CELL), ("does not look like a single cell:", "not a single cell"))


def _not_a_cell(warnings):
    """Why an image with these warnings is not counted as a cell (None: it is)."""
    for w in warnings or []:
        for start, reason in NOT_A_CELL_WARNINGS:
            if str(w).startswith(start):
                return reason
    return None


def prediction_to_dict(row, viewer):
    """A history row as plain data for the client (rows themselves are never sent to clients)."""
    return _as_dict(row.get_id(), row, can_delete=access.can_delete(viewer, row),
                    shown_as_stored=previews.shown_as_stored(row["image"]))


def _classes_of(names, probabilities):
    """(key, display name) of a stored prediction's classes in its model's order, from its ``class_names``
    and ``probabilities`` columns (each read once by the caller: a row copies a simpleObject on every
    read). Stored as a list of pairs because Anvil keeps simpleObject columns as PostgreSQL jsonb, which
    orders a dict's keys by length (nt3 before astro); a row written as a dict gives its probabilities'
    keys, and any key either lacks comes last."""
    names = names or []
    probabilities = probabilities or {}
    if isinstance(names, dict):
        pairs = [(k, names.get(k, k)) for k in probabilities] + [(k, d) for k, d in names.items() if k not in probabilities]
    else:
        pairs = [(str(p[0]), str(p[1])) for p in names if isinstance(p, (list, tuple)) and len(p) == 2]
    known = {k for k, _ in pairs}
    return pairs + [(k, k) for k in probabilities if k not in known]


def _as_dict(row_id, values, can_delete, shown_as_stored):
    """The client's view of a prediction; ``values``: its row, or the column values it was written with."""
    owner = values["user"]
    probabilities = values["probabilities"] or {}
    classes = _classes_of(values["class_names"], probabilities)
    class_names = dict(classes)
    return {
        "id": row_id,
        "created": values["created"],
        "user": owner["email"] if owner is not None else None,
        "filename": values["filename"],
        "image_sha256": values["image_sha256"],
        "model": {"name": values["model_name"], "version": values["model_version"]},
        "predicted_class": values["predicted_class"],
        "predicted_display_name": class_names.get(values["predicted_class"], values["predicted_class"]),
        "confidence": values["confidence"],
        "probabilities": probabilities,
        "classes": [{"key": k, "display_name": d} for k, d in classes],
        "warnings": values["warnings"] or [],
        # what the warnings say, for the clients: the ones to flag in lists, and whether there is no cell
        "flags": [w for w in values["warnings"] or [] if str(w).startswith(FLAG_WARNINGS)],
        "no_cell": _not_a_cell(values["warnings"]) == NO_CELL,
        "experiment": values["experiment"],
        "notes": values["notes"],
        "can_delete": can_delete,
        "can_edit": can_delete,  # experiment and notes: the same people (the owner, lab admins)
        "image_shown_as_stored": shown_as_stored,
    }


def _parse_date(value, field):
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise errors.InvalidRequest("%s must be a date like 2024-05-31" % field, code="bad_" + field)


def history_query(filters):
    """The search arguments for the history filters: condition (a class key or the name the app shows for
    it), date_from, date_to (inclusive, UTC days), experiment, user (email or a part of one) and model
    (name); None when nothing can match."""
    filters = filters or {}
    if not isinstance(filters, dict):
        raise errors.InvalidRequest("filters must be a mapping", code="bad_filters")
    known = {"condition", "date_from", "date_to", "experiment", "user", "model"}
    unknown = sorted(set(k for k, v in filters.items() if v not in (None, "")) - known)
    if unknown:
        raise errors.InvalidRequest("unknown filter %s; known filters: %s" % (", ".join(unknown), ", ".join(
            sorted(known))), code="bad_filters")
    kw = {}
    for key, column in (("condition", "predicted_class"), ("experiment", "experiment"), ("model", "model_name")):
        value = filters.get(key)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise errors.InvalidRequest("%s must be text" % key, code="bad_filters")
            kw[column] = value.strip()
    condition = kw.pop("predicted_class", None)
    if condition:
        kw["predicted_class"] = q.any_of(*_condition_keys(condition))
    email = filters.get("user")
    if email not in (None, ""):
        if not isinstance(email, str):
            raise errors.InvalidRequest("user must be an email address", code="bad_filters")
        text = email.strip().lower()
        owner = app_tables.users.get(email=text)
        # A whole address, or a part of one ("rita", "@lab.org"): a lab has few accounts to look through.
        owners = [owner] if owner is not None else [u for u in app_tables.users.search() if text in (u["email"] or "")]
        if not owners:
            return None  # nobody with such an email: nothing matches
        kw["user"] = owners[0] if len(owners) == 1 else q.any_of(*owners)
    start = _parse_date(filters.get("date_from"), "date_from")
    end = _parse_date(filters.get("date_to"), "date_to")
    if start is not None and end is not None and end < start:
        raise errors.InvalidRequest("The To date is before the From date (date_to before date_from)",
                                    code="bad_date_range")
    bounds = []
    if start is not None:
        bounds.append(q.greater_than_or_equal_to(_utc_midnight(start)))
    if end is not None:
        bounds.append(q.less_than(_utc_midnight(end + dt.timedelta(days=1))))
    if bounds:
        kw["created"] = q.all_of(*bounds)
    return kw


def _condition_keys(text):
    """The class keys a condition filter names: the text as typed, and the key of every class of the served
    models whose key or display name it is, case aside ("ASTRO", "Astrocyte medium" -> "astro"). Names are
    looked up only when a worker answers: browsing the history must not need one."""
    wanted = text.casefold()
    keys = [text]
    try:
        models = worker_models()
    except errors.WorkerUnavailable:
        models = []
    for m in models:
        for c in (m.get("classes") or []) if isinstance(m, dict) else []:
            if isinstance(c, dict) and isinstance(c.get("key"), str) and c["key"] not in keys and wanted in (
                    c["key"].casefold(), str(c.get("display_name") or "").casefold()):
                keys.append(c["key"])
    return keys


def _utc_midnight(day):
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def search_rows(filters, fetch=None):
    """The history rows the filters match, newest first; ``fetch``: a ``q.fetch_only`` of the columns the
    caller reads (the others are read row by row if used)."""
    kw = history_query(filters)
    if kw is None:
        return []
    return app_tables.predictions.search(order_by("created", ascending=False), *([] if fetch is None else [fetch]), **kw)


def _page_args(page, page_size):
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise errors.InvalidRequest("page must be a whole number from 0", code="bad_page")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise errors.InvalidRequest("page_size must be between 1 and %d" % MAX_PAGE_SIZE, code="bad_page")
    return page, page_size


def search_history(user, filters=None, page=0, page_size=25):
    """One page of the history, newest first: ``{rows, total, page, page_size, pages}``."""
    page, page_size = _page_args(page, page_size)
    rows = search_rows(filters)
    total = len(rows)
    start = page * page_size
    items = [prediction_to_dict(r, user) for r in rows[start:start + page_size]] if start < total else []
    return {"rows": items, "total": total, "page": page, "page_size": page_size,
            "pages": (total + page_size - 1) // page_size}


@anvil.server.callable
def search_predictions(filters=None, page=0, page_size=25):
    """The lab's prediction history, filtered and paged on the server, newest first."""
    return search_history(access.require_user(), filters, page, page_size)


def get_row(prediction_id):
    row = app_tables.predictions.get_by_id(prediction_id) if isinstance(prediction_id, str) else None
    if row is None:
        raise errors.NotFound("No prediction with id %r" % (prediction_id,))
    return row


@anvil.server.callable
def get_prediction(prediction_id):
    """One prediction with its image (a Media object)."""
    user = access.require_user()
    row = get_row(prediction_id)
    result = prediction_to_dict(row, user)
    result["image"] = row["image"]
    return result


@anvil.server.callable
def get_image_preview(prediction_id):
    """A version of a stored prediction's image that a browser can show (TIFF becomes PNG), as Media."""
    access.require_user()
    return preview_media(get_row(prediction_id))


@anvil.server.callable
def get_image_previews(prediction_ids):
    """``get_image_preview`` for several predictions in one call (a form's list of result cards needs
    one round trip, not one per card): ``{id: Media or None}``, None where there is no preview (an
    unknown id, an image that cannot be previewed)."""
    access.require_user()
    if not isinstance(prediction_ids, list) or not all(isinstance(i, str) for i in prediction_ids):
        raise errors.InvalidRequest("prediction_ids must be a list of prediction ids")
    if len(prediction_ids) > MAX_PREVIEWS_PER_CALL:
        raise errors.InvalidRequest("at most %d previews per call" % MAX_PREVIEWS_PER_CALL)
    out = {}
    for prediction_id in prediction_ids:
        try:
            out[prediction_id] = preview_media(get_row(prediction_id))
        except errors.NotFound:
            out[prediction_id] = None
    return out


def preview_media(row):
    """A version of the row's stored image that a browser can show (TIFF becomes PNG), as Media."""
    if row["image"] is None:
        raise errors.NotFound("This prediction has no stored image")
    data, content_type = previews.preview(row["image"])
    return anvil.BlobMedia(content_type, data, name="preview." + content_type.split("/")[-1])


def update_for_user(user, prediction_id, changes):
    """Change a prediction's experiment and/or notes (its owner or a lab admin): the tag a batch was
    classified under, when it was forgotten or mistyped. What the model answered is not changed."""
    if not isinstance(changes, dict) or not changes or set(changes) - {"experiment", "notes"}:
        raise errors.InvalidRequest('Send "experiment" and/or "notes": text, or null to clear it',
                                    code="bad_prediction_change")
    row = get_row(prediction_id)
    if not access.can_delete(user, row):
        raise errors.Forbidden("Only the person who made this prediction or a lab admin can change it")
    values = {}
    if "experiment" in changes:
        values["experiment"] = uploads.clean_text(changes["experiment"], "experiment", uploads.MAX_EXPERIMENT_CHARS)
    if "notes" in changes:
        values["notes"] = uploads.clean_text(changes["notes"], "notes", uploads.MAX_NOTES_CHARS)
    row.update(**values)
    return prediction_to_dict(row, user)


@anvil.server.callable
def update_prediction(prediction_id, **changes):
    """Change a stored prediction's ``experiment`` and/or ``notes`` (its owner or a lab admin)."""
    return update_for_user(access.require_user(), prediction_id, changes)


def delete_for_user(user, prediction_id):
    row = get_row(prediction_id)
    if not access.can_delete(user, row):
        raise errors.Forbidden("Only the person who made this prediction or a lab admin can delete it")
    row.delete()


@anvil.server.callable
def delete_prediction(prediction_id):
    """Delete a prediction and its stored image (its owner or a lab admin)."""
    delete_for_user(access.require_user(), prediction_id)
    return True


# --------------------------------------------------------------------------------------------------
# CSV export

CSV_COLUMNS = ("id", "created_utc", "user", "filename", "experiment", "notes", "model_name", "model_version",
               "predicted_class", "predicted_condition", "confidence", "image_sha256", "warnings")
CSV_READS = ("created", "filename", "experiment", "notes", "model_name", "model_version", "predicted_class",
             "confidence", "probabilities", "class_names", "image_sha256", "warnings")  # and the user's email


def _csv_cell(value):
    """Text for a CSV cell; cells a spreadsheet would run as a formula are quoted with a leading '."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    text = str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


def history_csv(filters=None):
    """The filtered history as CSV (UTF-8 bytes): one row per prediction, one ``p_<class>`` column per class.

    Two passes over the search, neither keeping its rows: the first, reading only the classes, finds the
    class columns, the second writes the rows (a history of a million predictions is a few GB as rows, a
    few hundred MB as CSV). A row added between the passes with a class no earlier row had goes without
    that probability."""
    classes = []
    for r in search_rows(filters, q.fetch_only("class_names", "probabilities")):
        for key, _ in _classes_of(r["class_names"], r["probabilities"]):
            if key not in classes:
                classes.append(key)
    rows = search_rows(filters, q.fetch_only(*CSV_READS, user=q.fetch_only("email")))
    out = io.BytesIO()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(CSV_COLUMNS) + ["p_" + k for k in classes])
    for r in rows:
        owner = r["user"]
        probs = r["probabilities"] or {}
        names = dict(_classes_of(r["class_names"], probs))
        created = r["created"]
        writer.writerow([_csv_cell(v) for v in (
            r.get_id(), created.astimezone(dt.timezone.utc).isoformat() if created else None,
            owner["email"] if owner is not None else None, r["filename"], r["experiment"], r["notes"],
            r["model_name"], r["model_version"], r["predicted_class"],
            names.get(r["predicted_class"], r["predicted_class"]), r["confidence"], r["image_sha256"],
            "; ".join(r["warnings"] or []),
        )] + [_csv_cell(probs.get(k)) for k in classes])
    text.flush()
    return out.getvalue()


@anvil.server.callable
def export_predictions_csv(filters=None):
    """The filtered history as a downloadable CSV file."""
    access.require_user()
    return anvil.BlobMedia("text/csv", history_csv(filters), name="nscfate-predictions.csv")


# --------------------------------------------------------------------------------------------------
# Experiment summary


def summarise_experiment(experiment, model=None):
    """Share of cells predicted in each condition for one experiment, with 95% Wilson intervals.

    Predictions by different models (or model versions) are summarised separately, since their
    class sets and error rates differ. ``mean_probability`` is the average predicted probability of
    each condition (a second, calibration-dependent estimate of the share). Images flagged as no cell
    or not a single cell are not cells: they are counted in ``left_out`` (by reason), not in the shares.
    An image uploaded again (the same SHA-256) is one cell: counted once per model, its repeats in
    ``repeats``; the top-level counts are of distinct images, whichever models classified them.
    """
    experiment = uploads.clean_text(experiment, "experiment", uploads.MAX_EXPERIMENT_CHARS)
    if experiment is None:
        raise errors.InvalidRequest("Choose an experiment to summarise", code="bad_experiment")
    kw = {"experiment": experiment}
    if model:
        kw["model_name"] = model
    groups = {}
    cells, not_cells = set(), set()  # distinct images, over all models
    reads = q.fetch_only("model_name", "model_version", "warnings", "predicted_class", "class_names", "probabilities",
                         "image_sha256")
    for r in app_tables.predictions.search(reads, **kw):
        key = (r["model_name"], r["model_version"])
        g = groups.setdefault(key, {"counts": {}, "prob_sums": {}, "order": [], "names": {}, "n": 0, "left_out": {},
                                    "seen": set(), "repeats": 0})
        image = r["image_sha256"] or r.get_id()
        if image in g["seen"]:  # a double drop or a re-upload: the same cell, and the same answer
            g["repeats"] += 1
            continue
        g["seen"].add(image)
        reason = _not_a_cell(r["warnings"])
        if reason is not None:
            g["left_out"][reason] = g["left_out"].get(reason, 0) + 1
            not_cells.add(image)
            continue
        cells.add(image)
        g["n"] += 1
        g["counts"][r["predicted_class"]] = g["counts"].get(r["predicted_class"], 0) + 1
        probabilities = r["probabilities"] or {}
        for k, name in _classes_of(r["class_names"], probabilities):
            g["names"][k] = name
            if k not in g["order"]:
                g["order"].append(k)
        for k, p in probabilities.items():
            g["prob_sums"][k] = g["prob_sums"].get(k, 0.0) + p
    models = []
    for (name, version), g in sorted(groups.items(), key=lambda kv: -kv[1]["n"]):
        order = g["order"] + [k for k in g["counts"] if k not in g["order"]]
        conditions = stats.condition_shares(g["counts"], order, g["names"]) if g["n"] else []
        for c in conditions:
            c["mean_probability"] = g["prob_sums"].get(c["key"], 0.0) / g["n"]
        models.append({"model": {"name": name, "version": version}, "n_cells": g["n"], "conditions": conditions,
                       "left_out": g["left_out"], "repeats": g["repeats"]})
    return {"experiment": experiment, "n_cells": len(cells), "n_left_out": len(not_cells - cells),
            "n_repeats": sum(g["repeats"] for g in groups.values()), "models": models,
            "interval": "95% Wilson score interval for the share of cells predicted in each condition"}


@anvil.server.callable
def experiment_summary(experiment, model=None):
    """Per-experiment share of cells predicted in each condition, with 95% intervals."""
    access.require_user()
    return summarise_experiment(experiment, model)


# --------------------------------------------------------------------------------------------------
# Models and explanations


def worker_models(plots=False):
    """The worker's model cards; with ``plots``, each plot's PNG (Media) too, not only its title."""
    try:
        models = anvil.server.call("list_models", plots=plots)
    except Exception as e:
        raise errors.WorkerUnavailable("The prediction service is not available right now (%s)" % type(e).__name__)
    return models if isinstance(models, list) else []


@anvil.server.callable
def get_model_cards(plots=False):
    """The model cards of the models the connected workers serve (the worker's ``list_models``; named
    differently because on Anvil an uplink function shadows a server function of the same name). With
    ``plots``, each plot's PNG too (a few hundred KB: for the Models page, not for a model picker)."""
    access.require_user()
    return worker_models(plots=bool(plots))


@anvil.server.callable
def explain_prediction(prediction_id):
    """A Grad-CAM overlay for a stored prediction, computed again by the worker on the stored image."""
    access.require_user()
    return explain(prediction_id)


def explain(prediction_id):
    """explain_prediction without the sign-in check (also used by the REST API):
    ``{"gradcam": PNG Media, "model": {name, version}, "note": str or None}``."""
    row = get_row(prediction_id)
    try:
        out = anvil.server.call("predict_cell_fate", row["image"], model=row["model_name"] or None, explain=True)
    except anvil.server.AnvilWrappedError as e:
        type_name = (getattr(e, "error_obj", None) or {}).get("type") or ""
        if type_name.rsplit(".", 1)[-1] in WORKER_USER_ERRORS:
            raise errors.InvalidRequest("The model that made this prediction (%s) is not served any more"
                                        % row["model_name"], code="unknown_model")
        raise errors.WorkerUnavailable("The prediction service is not available right now")
    except Exception as e:
        raise errors.WorkerUnavailable("The prediction service is not available right now (%s)" % type(e).__name__)
    gradcam = out.get("gradcam") if isinstance(out, dict) else None
    if not isinstance(gradcam, anvil.Media):
        raise errors.WorkerUnavailable("The prediction service did not return a Grad-CAM image")
    model = out.get("model") or {}
    note = None
    if model.get("version") and model.get("version") != row["model_version"]:
        note = "Explained with model version %s; the prediction was made with version %s" % (
            model.get("version"), row["model_version"])
    log.info("explained prediction %s", row.get_id())
    return {"gradcam": gradcam, "model": model, "note": note}
