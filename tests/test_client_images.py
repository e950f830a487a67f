"""client_code/images.py (run here under CPython) against the real server functions: how many server
calls a list of result cards costs, and what each card shows."""

from __future__ import annotations

import importlib.util
import io
from types import SimpleNamespace

import anvil
import numpy as np
import pytest
import tifffile

from apphost.testing import FakeWorker, make_runtime, png_bytes
from tests.livehost import ROOT_DIR


@pytest.fixture
def rt(tmp_path):
    runtime = make_runtime(tmp_path, FakeWorker())
    yield runtime
    runtime.close()
    runtime.db.dispose()


@pytest.fixture
def client(rt):
    """The client module, its server calls going to the runtime as a signed-in researcher; returns
    (module, list of the names it called)."""
    session = rt.accounts.create_session(rt.accounts.create_user("ann@lab.org", "correct horse battery"))
    calls = []

    def call(name, *args, **kwargs):
        calls.append(name)
        return rt.call(name, *args, session=session, **kwargs)

    spec = importlib.util.spec_from_file_location("client_images", ROOT_DIR / "client_code" / "images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # only the client module's calls go through `call` (server code's own private calls stay as they are)
    module.anvil = SimpleNamespace(server=SimpleNamespace(call=call))
    return module, calls, call


def tiff(seed: int) -> anvil.BlobMedia:
    buf = io.BytesIO()
    tifffile.imwrite(buf, (1000 + seed + np.arange(64, dtype=np.uint16).reshape(8, 8) * 7))
    return anvil.BlobMedia("image/tiff", buf.getvalue(), name=f"cell{seed}.tif")


def test_a_list_of_results_gets_its_tiff_previews_in_one_call(client):
    module, calls, call = client
    png = anvil.BlobMedia("image/png", png_bytes(1), name="cell.png")
    tiff_named_png = anvil.BlobMedia("application/octet-stream", tiff(9).get_bytes(), name="mislabelled.png")
    files = [png, *(tiff(i) for i in range(5)), tiff_named_png,
             anvil.BlobMedia("text/plain", b"notes", name="notes.txt")]
    results = call("classify_cell_images", files)
    for r in results:
        r["image"] = files[r["index"]]  # as the Classify form keeps the uploaded files
    calls.clear()
    module.attach_previews(results)
    assert calls == ["get_image_previews"]
    shown = [module.displayable(r) for r in results]
    assert calls == ["get_image_previews"]  # the cards ask for nothing more
    assert shown[0] is png  # a PNG is shown as uploaded
    for image in shown[1:7]:  # TIFF, also the one whose name says PNG: decided by its sniffed type
        assert image.content_type == "image/png" and image.get_bytes().startswith(b"\x89PNG")
    assert shown[7] is None  # rejected: nothing stored, nothing to show


def test_previews_refuse_bad_arguments_and_name_unknown_ids(client, rt):
    module, calls, call = client
    (stored,) = call("classify_cell_images", [tiff(1)])
    out = call("get_image_previews", [stored["id"], "[99,99]"])
    assert out["[99,99]"] is None and out[stored["id"]].content_type == "image/png"
    for bad in ("[1,1]", [1], ["[1,1]"] * 65):
        with pytest.raises(Exception) as e:
            call("get_image_previews", bad)
        assert type(e.value).__name__ == "InvalidRequest"
    with pytest.raises(Exception) as e:
        rt.call("get_image_previews", [stored["id"]])  # not signed in
    assert type(e.value).__name__ == "NotSignedIn"


def test_a_single_item_asks_for_its_own_preview(client):
    module, calls, call = client
    (stored,) = call("classify_cell_images", [tiff(2)])
    detail = call("get_prediction", stored["id"])
    calls.clear()
    image = module.displayable(detail)
    assert calls == ["get_image_preview"] and image.content_type == "image/png"
