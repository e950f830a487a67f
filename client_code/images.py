"""Showing stored cell images in the browser (client module)."""

import anvil
import anvil.server


def displayable(item):
    """Media a browser can show for a prediction's image, or None.

    PNG, JPEG and BMP are shown as uploaded (the server says which, from the image's sniffed type:
    ``image_shown_as_stored``). Browsers cannot show TIFF (16-bit IFC exports mostly are), so for a
    stored prediction the server sends a contrast-stretched PNG of its first page; the prediction
    itself always used the full image. A list of results gets its previews in one call first
    (:func:`attach_previews`); a single item asks for its own.
    """
    if "preview" in item:
        return item["preview"]
    if item.get("image_shown_as_stored"):
        return item.get("image")
    if not item.get("id"):
        return None  # a rejected file: nothing was stored
    try:
        return anvil.server.call("get_image_preview", item["id"])
    except Exception:
        return None  # no preview is not an error: the result stands without it


def attach_previews(results):
    """Set ``preview`` on every stored result a browser cannot show as uploaded, with one server call
    for all of them (not one per result card)."""
    wanted = [r for r in results if r.get("ok") and r.get("id") and not r.get("image_shown_as_stored")]
    if not wanted:
        return
    try:
        found = anvil.server.call("get_image_previews", [r["id"] for r in wanted])
    except Exception:
        found = {}  # no previews is not an error: the results stand without them
    for r in wanted:
        r["preview"] = found.get(r["id"])


def show_gradcam(form, prediction_id):
    """Ask the server for a prediction's Grad-CAM and show it in ``form``'s gradcam_image and
    gradcam_note (a result card and the detail view both have them); the button is off while it runs."""
    form.gradcam_button.enabled = False
    try:
        out = anvil.server.call("explain_prediction", prediction_id)
    except Exception as e:
        anvil.alert("Grad-CAM is not available: %s" % e)
        form.gradcam_button.enabled = True
        return
    form.gradcam_image.source = out["gradcam"]
    form.gradcam_image.visible = True
    form.gradcam_note.text = out["note"] or "Regions that most raised the predicted condition's score."
    form.gradcam_note.visible = True
    form.gradcam_button.visible = False
