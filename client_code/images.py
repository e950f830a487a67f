"""Showing stored cell images in the browser (client module)."""

import anvil.server

BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def displayable(item):
    """Media a browser can show for a prediction's image, or None.

    PNG, JPEG and BMP are shown as uploaded. Browsers cannot show TIFF (16-bit IFC exports mostly are),
    so for a stored prediction the server sends a contrast-stretched PNG of its first page; the
    prediction itself always used the full image.
    """
    name = (item.get("filename") or "").lower()
    if item.get("image") is not None and name.endswith(BROWSER_SUFFIXES):
        return item["image"]
    if not item.get("id"):
        return None  # a rejected file: nothing was stored
    try:
        return anvil.server.call("get_image_preview", item["id"])
    except Exception:
        return None  # no preview is not an error: the result stands without it
