"""The REST API and sign-in routes over HTTP (Starlette test client, real runtime and SQL tables)."""

from __future__ import annotations

import warnings

import pytest
from starlette.applications import Starlette

from apphost.http_api import COOKIE_NAME, api_routes
from apphost.testing import FakeWorker, make_runtime, png_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2; httpx is what is pinned here
    from starlette.testclient import TestClient

ANN = ("ann@lab.org", "correct horse battery")
BOB = ("bob@lab.org", "another horse battery")


@pytest.fixture
def worker():
    return FakeWorker()


@pytest.fixture
def status():
    return {"workers": 1}


@pytest.fixture
def rt(tmp_path, worker, status):
    runtime = make_runtime(tmp_path, worker, host_functions={"nscfate_host_status": lambda: dict(status)})
    runtime.accounts.create_user(*ANN)
    runtime.accounts.create_user(*BOB)
    runtime.accounts.create_user("ada@lab.org", "admin horse battery", role="lab_admin")
    yield runtime
    runtime.close()
    runtime.db.dispose()


@pytest.fixture
def client(rt):
    with TestClient(Starlette(routes=api_routes(rt)), base_url="http://testserver") as c:
        yield c


def upload(client, n=2, auth=ANN, **data):
    files = [("file", (f"cell{i}.png", png_bytes(i), "image/png")) for i in range(n)]
    return client.post("/_/api/predictions", auth=auth, files=files, data=data)


def test_health_needs_no_auth_and_reports_workers(client, status, worker):
    r = client.get("/_/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "workers": 1, "models": ["tiny-medium4"]}
    status["workers"] = 0
    r = client.get("/_/api/health")
    assert r.status_code == 503 and r.json()["workers"] == 0 and r.json()["status"] == "degraded"


def test_everything_else_needs_credentials(client):
    for path in ("/_/api/predictions", "/_/api/predictions.csv", "/_/api/models", "/_/api/summary?experiment=x"):
        r = client.get(path)
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"], path
        assert r.json()["error"] == {"code": "not_signed_in",
                                     "message": "Sign in first, or send your email and password with HTTP Basic"}
    assert client.get("/_/api/predictions", auth=("ann@lab.org", "wrong password")).status_code == 401
    from_page = client.get("/_/api/predictions", headers={"x-requested-with": "fetch"})
    assert from_page.status_code == 401 and "www-authenticate" not in from_page.headers  # no browser dialog


@pytest.fixture
def bodies_read(monkeypatch):
    """The paths of the requests whose body the host read (appended as it reads them)."""
    from apphost.http_api import HttpApi

    read = []
    real = HttpApi._request_data

    async def counting(self, request):
        read.append(request.url.path)
        return await real(self, request)

    monkeypatch.setattr(HttpApi, "_request_data", counting)
    return read


def test_uploads_without_valid_credentials_are_refused_before_the_body_is_read(client, rt, bodies_read):
    from apphost.http_api import CHECK_CREDENTIALS_FIRST_ABOVE

    big = [("file", ("big.png", png_bytes(1) + b"\0" * CHECK_CREDENTIALS_FIRST_ABOVE, "image/png"))]
    failures = rt.accounts.limiter.keys_tracked()
    for auth in (None, ("ann@lab.org", "wrong password"), ("nobody@lab.org", "wrong password")):
        r = client.post("/_/api/predictions", auth=auth, files=big)
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"], auth
        assert r.json()["error"]["code"] == "not_signed_in"
    assert upload(client, 1, auth=None).status_code == 401  # no credentials at all: never read
    assert bodies_read == []  # answered from the headers alone
    limiter = rt.accounts.limiter
    assert limiter.keys_tracked() == failures + 3  # two emails and the address
    assert len(limiter._failures["addr:testclient"]) == 2  # each wrong password counted once
    assert upload(client, 1, auth=("ann@lab.org", "wrong password")).status_code == 401  # small: the endpoint's check
    assert len(limiter._failures["addr:testclient"]) == 3 and bodies_read == ["/_/api/predictions"]
    assert client.post("/_/api/predictions", auth=ANN, files=big).status_code in (200, 422)  # right: read
    assert bodies_read == ["/_/api/predictions"] * 2


def test_a_disabled_accounts_browser_session_cannot_send_a_large_body(client, rt, bodies_read):
    """Its cookie and CSRF token are still right, but the account is checked before the body is read."""
    from apphost.http_api import CHECK_CREDENTIALS_FIRST_ABOVE

    token = client.post("/_/auth/login", json={"email": ANN[0], "password": ANN[1]}).json()["csrf_token"]
    big = [("file", ("big.png", png_bytes(1) + b"\0" * CHECK_CREDENTIALS_FIRST_ABOVE, "image/png"))]
    headers = {"x-csrf-token": token, "x-requested-with": "fetch"}
    assert client.post("/_/api/predictions", files=big, headers=headers).status_code in (200, 422)  # enabled: read
    assert bodies_read == ["/_/api/predictions"]
    rt.accounts.users.get(email=ANN[0]).update(enabled=False)  # a lab admin disables the account
    r = client.post("/_/api/predictions", files=big, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_signed_in"
    assert "www-authenticate" not in r.headers  # a browser page: no password dialog
    assert bodies_read == ["/_/api/predictions"]  # refused from the headers alone


def test_sign_in_routes_take_small_bodies_only(client):
    big = {"email": ANN[0], "password": ANN[1], "padding": "x" * 70_000}
    for path in ("/_/auth/login", "/_/auth/signup"):
        r = client.post(path, json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", path
    r = client.post("/_/auth/login", data={"email": ANN[0], "password": ANN[1]})  # a plain HTML form works
    assert r.status_code == 200 and r.json()["user"]["email"] == ANN[0]


def test_post_multipart_then_list_detail_image_and_csv(client):
    r = upload(client, 3, experiment="E1", notes="first batch")
    assert r.status_code == 200 and r.json()["n_ok"] == 3
    first = r.json()["results"][0]
    assert first["filename"] == "cell0.png" and first["experiment"] == "E1" and first["url"].startswith("/_/api/")
    listing = client.get("/_/api/predictions", auth=BOB, params={"experiment": "E1", "page_size": 2})
    assert listing.status_code == 200
    body = listing.json()
    assert (body["total"], body["pages"], len(body["rows"])) == (3, 2, 2)
    detail = client.get(first["url"], auth=BOB)
    assert detail.status_code == 200 and detail.json()["id"] == first["id"] and detail.json()["can_delete"] is False
    image = client.get(first["image_url"], auth=BOB)
    assert image.content == png_bytes(0) and image.headers["content-type"] == "image/png"
    csv = client.get("/_/api/predictions.csv", auth=BOB, params={"experiment": "E1"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"] and csv.text.count("\n") == 4


def test_post_raw_body(client):
    r = client.post("/_/api/predictions", auth=ANN, params={"filename": "raw.tif", "experiment": "E2"},
                    content=png_bytes(7), headers={"content-type": "image/png"})
    assert r.status_code == 200
    assert r.json()["results"][0]["filename"] == "raw.tif" and r.json()["results"][0]["experiment"] == "E2"


def test_post_errors_are_json(client, worker):
    r = client.post("/_/api/predictions", auth=ANN, files=[("file", ("x.txt", b"hello", "text/plain"))])
    assert r.status_code == 422 and r.json()["results"][0]["error"]["code"] == "not_an_image"
    assert r.json()["results"][0]["error"]["retry_later"] is False  # the file's own fault
    r = client.post("/_/api/predictions", auth=ANN, data={"experiment": "E"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_files"
    r = upload(client, 1, model="no-such-model")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model"
    worker.fail = True
    r = upload(client, 1)
    assert r.status_code == 503 and r.json()["results"][0]["error"]["code"] == "worker_unavailable"
    r = client.get("/_/api/predictions", auth=ANN, params={"page": "two"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_page"
    r = client.get("/_/api/predictions/[1,99]", auth=ANN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/_/api/nothing-here", auth=ANN).status_code == 404
    r = client.get("/_/api/predictions/%0A0", auth=ANN)  # a newline in the path (found by the fuzzer)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_body_size_limit(rt, client):
    small = TestClient(Starlette(routes=api_routes(rt, max_body_bytes=1000)))
    r = small.post("/_/api/predictions", auth=ANN, content=b"\x89PNG\r\n\x1a\n" + b"0" * 2000,
                   headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_delete_permissions_over_http(client):
    pid = upload(client, 1).json()["results"][0]["url"]
    assert client.delete(pid, auth=BOB).status_code == 403
    assert client.delete(pid, auth=ANN).status_code == 200
    assert client.get(pid, auth=ANN).status_code == 404


def test_a_prediction_is_tagged_afterwards_over_http(client):
    pid = upload(client, 1).json()["results"][0]["url"]
    r = client.patch(pid, auth=ANN, json={"experiment": "E-late", "notes": "forgot the tag"})
    assert r.status_code == 200 and (r.json()["experiment"], r.json()["notes"]) == ("E-late", "forgot the tag")
    assert r.json()["url"] == pid
    assert client.patch(pid, auth=BOB, json={"experiment": "mine"}).status_code == 403
    bad = client.patch(pid, auth=ANN, content=b"not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_prediction_change"
    assert client.get(pid, auth=ANN).json()["experiment"] == "E-late"


def test_summary_and_models(client):
    upload(client, 4, experiment="E5")
    r = client.get("/_/api/summary", auth=ANN, params={"experiment": "E5"})
    assert r.status_code == 200 and r.json()["n_cells"] == 4
    assert sum(c["count"] for c in r.json()["models"][0]["conditions"]) == 4
    assert client.get("/_/api/models", auth=ANN).json()["models"][0]["name"] == "tiny-medium4"


def _sign_in(client, creds=ANN):
    r = client.post("/_/auth/login", json={"email": creds[0], "password": creds[1]})
    assert r.status_code == 200
    return r.json()["csrf_token"]


def test_browser_session_cookie_and_csrf(client):
    r = client.post("/_/auth/login", json={"email": ANN[0], "password": ANN[1]})
    cookie = r.headers["set-cookie"]
    assert COOKIE_NAME in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    token = r.json()["csrf_token"]
    assert client.get("/_/auth/me").json() == {
        "user": {"email": ANN[0], "role": "researcher", "password_is_temporary": False}, "csrf_token": token}
    assert client.get("/_/api/predictions").status_code == 200  # the cookie authenticates reads
    files = [("file", ("c.png", png_bytes(3), "image/png"))]
    assert client.post("/_/api/predictions", files=files).status_code == 403  # no CSRF token
    assert client.post("/_/api/predictions", files=files, headers={"x-csrf-token": "forged"}).status_code == 403
    r = client.post("/_/api/predictions", files=files, headers={"x-csrf-token": token})
    assert r.status_code == 200 and r.json()["results"][0]["user"] == ANN[0]
    assert client.post("/_/auth/logout").status_code == 403  # logging out needs the token too
    assert client.post("/_/auth/logout", headers={"x-csrf-token": token}).status_code == 200
    assert client.get("/_/auth/me").json() == {"user": None, "csrf_token": None}
    assert client.get("/_/api/predictions").status_code == 401


def test_a_made_up_password_is_reported_until_the_person_chooses_one(client, rt):
    _, made_up = rt.accounts.reset_password(ANN[0])
    r = client.post("/_/auth/login", json={"email": ANN[0], "password": made_up})
    assert r.status_code == 200 and r.json()["user"]["password_is_temporary"] is True
    assert client.get("/_/auth/me").json()["user"]["password_is_temporary"] is True  # also after a reload
    r = client.post("/_/auth/password", json={"old_password": made_up, "new_password": ANN[1]},
                    headers={"x-csrf-token": r.json()["csrf_token"]})
    assert r.status_code == 200 and r.json()["user"]["password_is_temporary"] is False
    assert client.get("/_/auth/me").json()["user"]["password_is_temporary"] is False


def test_cross_site_state_changes_are_refused(client):
    r = client.post("/_/api/predictions", auth=ANN, headers={"origin": "https://evil.example"},
                    files=[("file", ("c.png", png_bytes(3), "image/png"))])
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    r = client.post("/_/auth/login", json={"email": ANN[0], "password": ANN[1]},
                    headers={"origin": "https://evil.example"})
    assert r.status_code == 403


def test_sign_in_errors_and_rate_limit(client, rt):
    r = client.post("/_/auth/login", json={"email": ANN[0], "password": "nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_credentials"
    for _ in range(rt.accounts.limiter.max_failures):
        client.post("/_/auth/login", json={"email": "bob@lab.org", "password": "nope"})
    r = client.post("/_/auth/login", json={"email": BOB[0], "password": BOB[1]})  # right password, too late
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_attempts"


def test_signup_is_controlled(client):
    r = client.post("/_/auth/signup", json={"email": "new@lab.org", "password": "a good long password"})
    assert r.status_code == 202
    again = client.post("/_/auth/signup", json={"email": ANN[0], "password": "a good long password"})
    assert again.status_code == 202 and again.json() == r.json()  # no account discovery
    r = client.post("/_/auth/login", json={"email": "new@lab.org", "password": "a good long password"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_enabled"
    r = client.post("/_/auth/signup", json={"email": "x@lab.org", "password": "short"})
    assert r.status_code == 400


def test_change_password_ends_old_sessions(client, rt):
    token = _sign_in(client)
    other = TestClient(Starlette(routes=api_routes(rt)))
    _sign_in(other)
    r = client.post("/_/auth/password", headers={"x-csrf-token": token},
                    json={"old_password": ANN[1], "new_password": "a brand new passphrase"})
    assert r.status_code == 200
    assert client.get("/_/auth/me").json()["user"]["email"] == ANN[0]  # this browser got a fresh session
    assert other.get("/_/auth/me").json()["user"] is None  # the other one was signed out
    assert client.get("/_/api/predictions", auth=("ann@lab.org", "a brand new passphrase")).status_code == 200


# ---- previews, Grad-CAM and model plots (what the local web UI shows)


def _tiff(pixels, **options) -> bytes:
    import io

    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, pixels, **options)
    return out.getvalue()


def _upload_one(client, name, data, mime):
    r = client.post("/_/api/predictions", auth=ANN, files=[("file", (name, data, mime))])
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_previews_browsers_can_show(client):
    import io

    import numpy as np
    from PIL import Image

    png = png_bytes(3)
    item = _upload_one(client, "cell.png", png, "image/png")
    r = client.get(item["preview_url"], auth=ANN)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png

    # A dim 16-bit TIFF (values 1000..1400 of 65535) becomes a PNG that uses the whole 8-bit range.
    ramp = (1000 + np.arange(40 * 50).reshape(40, 50) % 401).astype(np.uint16)
    item = _upload_one(client, "cell16.tif", _tiff(ramp), "image/tiff")
    r = client.get(item["preview_url"], auth=ANN)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(r.content)))
    assert shown.dtype == np.uint8 and shown.shape == (40, 50)
    assert shown.min() == 0 and shown.max() == 255
    assert np.all(np.diff(shown[0, :10].astype(int)) >= 0)  # brighter stays brighter

    big = np.zeros((600, 300), np.uint16)  # shrunk to at most 256 px, aspect kept
    big[:, 150:] = 5000
    item = _upload_one(client, "big.tif", _tiff(big), "image/tiff")
    shown = Image.open(io.BytesIO(client.get(item["preview_url"], auth=ANN).content))
    assert shown.size == (128, 256)

    rgb = np.zeros((8, 8, 3), np.uint16)  # 16-bit colour: stretched like grey
    rgb[:, 4:, 1] = 900
    item = _upload_one(client, "rgb16.tif", _tiff(rgb), "image/tiff")
    shown = np.asarray(Image.open(io.BytesIO(client.get(item["preview_url"], auth=ANN).content)))
    assert shown.shape == (8, 8, 3) and shown[0, 7, 1] == 255 and shown[0, 0].max() == 0

    # Five channels cannot be shown: a clear 404 rather than a broken image or a 500.
    item = _upload_one(client, "five.tif", _tiff(np.full((8, 8, 5), 900, np.uint16), photometric="minisblack",
                                                     planarconfig="contig"), "image/tiff")
    r = client.get(item["preview_url"], auth=ANN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_preview"
    assert client.get(item["preview_url"]).status_code == 401


def test_gradcam_over_http(client, worker):
    item = _upload_one(client, "cell.png", png_bytes(5), "image/png")
    r = client.get(item["gradcam_url"], auth=ANN)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == png_bytes(99)  # the overlay the worker computed
    assert r.headers["x-model"] == "tiny-medium4 1.0.0"
    name, args, kwargs = worker.calls[-1]
    assert name == "predict_cell_fate" and kwargs["explain"] is True and args[0].get_bytes() == png_bytes(5)
    worker.fail = True
    r = client.get(item["gradcam_url"], auth=ANN)
    assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unavailable"


def test_model_card_plots_become_urls(client, worker):
    import anvil

    plot = anvil.BlobMedia("image/png", png_bytes(7), name="confusion_matrix.png")
    cards = worker.list_models()
    cards[0]["plots"] = [{"title": "Confusion matrix", "image": plot}, plot]
    worker.list_models = lambda plots=False: cards
    listed = client.get("/_/api/models", auth=ANN).json()["models"][0]
    assert worker.calls[-1] == ("list_models", (), {"plots": False})  # a listing does not fetch the images
    assert listed["plots"] == [
        {"title": "Confusion matrix", "url": "/_/api/models/tiny-medium4/plots/0"},
        {"title": "confusion_matrix.png", "url": "/_/api/models/tiny-medium4/plots/1"}]
    r = client.get(listed["plots"][1]["url"], auth=ANN)
    assert worker.calls[-1] == ("list_models", (), {"plots": True})
    assert r.status_code == 200 and r.content == png_bytes(7) and r.headers["content-type"] == "image/png"
    assert client.get("/_/api/models/tiny-medium4/plots/2", auth=ANN).status_code == 404
    assert client.get("/_/api/models/other/plots/0", auth=ANN).status_code == 404


def test_previews_without_tifffile_use_pillow(client, monkeypatch):
    import io
    import sys

    import numpy as np
    from PIL import Image

    data = _tiff((1000 + np.arange(64).reshape(8, 8) * 5).astype(np.uint16))
    monkeypatch.setitem(sys.modules, "tifffile", None)  # an Anvil server environment without tifffile
    item = _upload_one(client, "cell16.tif", data, "image/tiff")
    shown = np.asarray(Image.open(io.BytesIO(client.get(item["preview_url"], auth=ANN).content)))
    assert shown.shape == (8, 8) and shown.min() == 0 and shown.max() == 255


def test_unreadable_form_data_is_a_json_error(client):
    for content_type in ("multipart/form-data; boundary=XYZ", "multipart/form-data"):
        r = client.post("/_/api/predictions", auth=ANN, content=b"no multipart here",
                        headers={"content-type": content_type})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_form", r.text
    r = client.post("/_/auth/login", content=b"no multipart here",
                    headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_credentials"


def test_lab_admins_approve_accounts_over_http(client, rt):
    ADA = ("ada@lab.org", "admin horse battery")
    assert client.post("/_/auth/signup", json={"email": "cy@lab.org", "password": "cyclic horse battery"}).status_code == 202
    assert client.get("/_/api/users", auth=ANN).status_code == 403  # researchers cannot
    users = client.get("/_/api/users", auth=ADA).json()["users"]
    assert users[0]["email"] == "cy@lab.org" and users[0]["enabled"] is False  # awaiting approval first
    cy = users[0]["id"]
    assert client.get("/_/api/predictions", auth=("cy@lab.org", "cyclic horse battery")).status_code == 401

    r = client.patch(f"/_/api/users/{cy}", auth=ADA, json={"enabled": True, "role": "lab_admin"})
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["role"] == "lab_admin"
    assert client.get("/_/api/predictions", auth=("cy@lab.org", "cyclic horse battery")).status_code == 200

    # Both changes or neither: disabling fails (not a bool), so the role change is not kept either.
    r = client.patch(f"/_/api/users/{cy}", auth=ADA, json={"role": "researcher", "enabled": "no"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_enabled"
    assert next(u for u in client.get("/_/api/users", auth=ADA).json()["users"] if u["id"] == cy)["role"] == "lab_admin"

    for bad in ({}, {"email": "x@lab.org"}, [True]):
        r = client.patch(f"/_/api/users/{cy}", auth=ADA, json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_user_change"
    assert client.patch("/_/api/users/nobody", auth=ADA, json={"enabled": False}).status_code == 404
    ada = next(u for u in users if u["email"] == "ada@lab.org")["id"]
    assert client.patch(f"/_/api/users/{cy}", auth=ADA, json={"enabled": False}).status_code == 200
    r = client.patch(f"/_/api/users/{ada}", auth=ADA, json={"role": "researcher"})  # the last lab admin stays
    assert r.status_code == 400 and r.json()["error"]["code"] == "last_admin"
