"""The REST API, served by Anvil under ``/_/api/`` (and by the local host at the same URLs).

Scripts authenticate with HTTP Basic (the account's email and password), the browser with its
session. Errors are JSON: ``{"error": {"code": ..., "message": ...}}`` with a matching status.

    POST   /_/api/predictions              multipart field ``file`` (repeatable) or a raw image body;
                                           optional experiment, notes, model (form or query fields)
    GET    /_/api/predictions              filters: condition, date_from, date_to, experiment, user,
                                           model; paging: page (from 0), page_size
    GET    /_/api/predictions/:id          one prediction (JSON)
    PATCH  /_/api/predictions/:id          JSON {"experiment": ..., "notes": ...}: change them (owner, lab admin)
    DELETE /_/api/predictions/:id          delete it (its owner or a lab admin)
    GET    /_/api/predictions/:id/image    the stored image
    GET    /_/api/predictions/:id/preview  the image as browsers can show it (TIFF -> PNG)
    GET    /_/api/predictions/:id/gradcam  a Grad-CAM overlay (PNG) computed by the worker
    GET    /_/api/predictions.csv          the filtered history as CSV
    GET    /_/api/summary?experiment=NAME  share of cells per predicted condition, 95% intervals
    GET    /_/api/models                   model cards of the served models
    GET    /_/api/models/:name/plots/:n    plot n of a model card (when the worker sends plots)
    GET    /_/api/users                    accounts, awaiting approval first (lab admins)
    PATCH  /_/api/users/:id                JSON {"enabled": bool} and/or {"role": ...} (lab admins)
    GET    /_/api/health                   no auth: {"status", "workers", "models"}
"""

import datetime as dt
import functools
import json
import urllib.parse

import anvil
import anvil.server
import anvil.users

from . import access, errors, predictions, uploads

# A function the local host provides to report its connected workers ({"workers": n}). Hosted Anvil
# has none; there the health check infers "at least one" from a successful list_models call.
HOST_STATUS_FUNCTION = "nscfate_host_status"

_FILTER_FIELDS = ("condition", "date_from", "date_to", "experiment", "user", "model")


def _json_default(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, anvil.Media):
        return None
    raise TypeError("not JSON serialisable: %s" % type(value).__name__)


def json_response(data, status=200):
    body = json.dumps(data, default=_json_default, sort_keys=True)
    return anvil.server.HttpResponse(status, body, {"Content-Type": "application/json; charset=utf-8"})


def error_response(status, code, message):
    return json_response({"error": {"code": code, "message": message}}, status)


def _api(fn):
    """Turn the app's typed errors into JSON error responses."""

    @functools.wraps(fn)
    def wrapper(**params):
        try:
            return fn(**params)
        except errors.AppError as e:
            return error_response(e.status, e.code, str(e))
        except anvil.users.AuthenticationFailed as e:
            return error_response(401, "not_signed_in", str(e) or "Sign in first")

    return wrapper


def _user():
    user = anvil.server.request.user
    # the endpoint wrapper takes the session's account first, and on Anvil that one is not checked for
    # being enabled (HTTP Basic sign-ins are)
    if user is None or not user["enabled"]:
        raise errors.NotSignedIn("Authenticate with your email and password (HTTP Basic)")
    return user


def _single(params, name):
    value = params.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _int_param(params, name, default):
    value = _single(params, name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise errors.InvalidRequest("%s must be a whole number" % name, code="bad_page")


def _filters(params):
    return {k: _single(params, k) for k in _FILTER_FIELDS if _single(params, k) not in (None, "")}


def _with_links(item):
    quoted = urllib.parse.quote(item["id"], safe="")
    item["url"] = "/_/api/predictions/" + quoted
    item["image_url"] = "/_/api/predictions/%s/image" % quoted
    item["preview_url"] = "/_/api/predictions/%s/preview" % quoted
    item["gradcam_url"] = "/_/api/predictions/%s/gradcam" % quoted
    return item


@anvil.server.http_endpoint("/predictions", methods=["GET", "POST"], authenticate_users=True)
@_api
def predictions_collection(**params):
    user = _user()
    request = anvil.server.request
    if request.method == "GET":
        page = predictions.search_history(user, _filters(params), _int_param(params, "page", 0),
                                          _int_param(params, "page_size", 25))
        page["rows"] = [_with_links(r) for r in page["rows"]]
        return json_response(page)
    body = request.body
    if "file" not in params and body is not None and (body.content_type or "").startswith("multipart/form-data"):
        params = dict(uploads.multipart_fields(body.content_type, body.get_bytes()), **params)  # as on Anvil
        body = None
    files = params.get("file")
    if files is None and body is not None:
        name = _single(params, "filename") or "upload"
        files = [anvil.BlobMedia(body.content_type or "application/octet-stream", body.get_bytes(), name=name)]
    if isinstance(files, anvil.Media):
        files = [files]
    if not files:
        raise errors.InvalidRequest("Send images as multipart field 'file' (repeatable) or as the request body",
                                    code="no_files")
    results = predictions.classify_for_user(
        user, files, _single(params, "experiment"), _single(params, "notes"), _single(params, "model"))
    results = [_with_links(r) if r.get("ok") else r for r in results]
    n_ok = sum(1 for r in results if r.get("ok"))
    refused = [r["error"] for r in results if not r.get("ok")]
    response = json_response({"results": results, "n_ok": n_ok, "n_rejected": len(results) - n_ok}, 200)
    if n_ok == 0:
        # Not the caller's fault and worth sending again later (each rejection says): 503 (507 for a
        # full disk), else 422.
        if any(e.get("retry_later") for e in refused):
            response.status = 507 if any(e["code"] == "storage_full" for e in refused) else 503
            response.headers["Retry-After"] = "10"
        else:
            response.status = 422
    return response


@anvil.server.http_endpoint("/predictions.csv", methods=["GET"], authenticate_users=True)
@_api
def predictions_csv(**params):
    _user()
    media = anvil.BlobMedia("text/csv; charset=utf-8", predictions.history_csv(_filters(params)),
                            name="nscfate-predictions.csv")
    return anvil.server.HttpResponse(200, media, {
        "Content-Disposition": 'attachment; filename="nscfate-predictions.csv"'})


@anvil.server.http_endpoint("/predictions/:prediction_id", methods=["GET", "PATCH", "DELETE"], authenticate_users=True)
@_api
def prediction_item(prediction_id, **params):
    user = _user()
    if anvil.server.request.method == "DELETE":
        predictions.delete_for_user(user, prediction_id)
        return json_response({"deleted": prediction_id})
    if anvil.server.request.method == "PATCH":
        try:
            changes = anvil.server.request.body_json
        except ValueError:
            changes = None
        return json_response(_with_links(predictions.update_for_user(user, prediction_id, changes)))
    return json_response(_with_links(predictions.prediction_to_dict(predictions.get_row(prediction_id), user)))


@anvil.server.http_endpoint("/predictions/:prediction_id/image", methods=["GET"], authenticate_users=True)
@_api
def prediction_image(prediction_id, **params):
    _user()
    image = predictions.get_row(prediction_id)["image"]
    if image is None:
        raise errors.NotFound("This prediction has no stored image")
    return anvil.server.HttpResponse(200, image, {"Content-Type": image.content_type or "application/octet-stream",
                                                  "X-Content-Type-Options": "nosniff"})


@anvil.server.http_endpoint("/predictions/:prediction_id/preview", methods=["GET"], authenticate_users=True)
@_api
def prediction_preview(prediction_id, **params):
    _user()
    image = predictions.preview_media(predictions.get_row(prediction_id))
    # A prediction's image never changes, so the browser may keep the preview for a while.
    return anvil.server.HttpResponse(200, image, {
        "Content-Type": image.content_type, "Cache-Control": "private, max-age=3600"})


@anvil.server.http_endpoint("/predictions/:prediction_id/gradcam", methods=["GET"], authenticate_users=True)
@_api
def prediction_gradcam(prediction_id, **params):
    _user()
    out = predictions.explain(prediction_id)
    model = out.get("model") or {}
    headers = {"Content-Type": "image/png", "X-Model": "%s %s" % (model.get("name") or "", model.get("version") or "")}
    if out.get("note"):
        headers["X-Explanation-Note"] = out["note"]
    return anvil.server.HttpResponse(200, out["gradcam"], headers)


@anvil.server.http_endpoint("/summary", methods=["GET"], authenticate_users=True)
@_api
def summary(**params):
    _user()
    return json_response(predictions.summarise_experiment(_single(params, "experiment"), _single(params, "model")))


@anvil.server.http_endpoint("/models", methods=["GET"], authenticate_users=True)
@_api
def models(**params):
    _user()
    cards = []
    for card in predictions.worker_models():
        if not isinstance(card, dict):
            continue
        card = dict(card)
        # Plot images (Media) cannot travel in JSON: each becomes a URL of its own.
        card["plots"] = [
            {"title": _plot_title(plot, n), "url": "/_/api/models/%s/plots/%d" % (
                urllib.parse.quote(str(card.get("name")), safe=""), n)}
            for n, plot in enumerate(card.get("plots") or [])]
        cards.append(card)
    return json_response({"models": cards})


def _plot_title(plot, n):
    title = plot.get("title") if isinstance(plot, dict) else getattr(plot, "name", None)
    return str(title or "Plot %d" % (n + 1))


@anvil.server.http_endpoint("/models/:name/plots/:index", methods=["GET"], authenticate_users=True)
@_api
def model_plot(name, index, **params):
    _user()
    for card in predictions.worker_models(plots=True):
        if isinstance(card, dict) and str(card.get("name")) == name:
            plots = card.get("plots") or []
            n = int(index) if str(index).isdigit() else -1
            if not 0 <= n < len(plots):
                break
            image = plots[n].get("image") if isinstance(plots[n], dict) else plots[n]
            if not isinstance(image, anvil.Media):
                break
            return anvil.server.HttpResponse(200, image, {
                "Content-Type": image.content_type or "application/octet-stream",
                "Cache-Control": "private, max-age=600"})
    raise errors.NotFound("Model %r has no plot %s" % (name, index))


@anvil.server.http_endpoint("/users", methods=["GET"], authenticate_users=True)
@_api
def users_collection(**params):
    _user()
    return json_response({"users": access.list_users()})


@anvil.server.http_endpoint("/users/:user_id", methods=["PATCH"], authenticate_users=True)
@_api
def user_item(user_id, **params):
    """Approve (enable) or disable an account, or change its role: what the Admin form does."""
    _user()
    try:
        changes = anvil.server.request.body_json
    except ValueError:
        changes = None
    if not isinstance(changes, dict) or not changes or set(changes) - {"enabled", "role"}:
        raise errors.InvalidRequest('Send a JSON object with "enabled" (true or false) and/or "role" '
                                    '(researcher or lab_admin)', code="bad_user_change")
    return json_response(access.change_user(user_id, **changes))  # both changes or neither


@anvil.server.http_endpoint("/health", methods=["GET"])
def health(**params):
    """No authentication: how many workers are connected and which models they serve."""
    try:
        workers = int(anvil.server.call(HOST_STATUS_FUNCTION)["workers"])
    except Exception:
        workers = None  # not on the local host
    models = []
    if workers != 0:
        try:
            models = [m.get("name") for m in anvil.server.call("list_models") if isinstance(m, dict)]
            if workers is None:
                workers = 1  # at least one answered
        except Exception:
            workers = 0 if workers is None else workers
    return json_response({"status": "ok" if workers and models else "degraded", "workers": workers,
                          "models": models}, 200 if workers else 503)
