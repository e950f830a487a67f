"""What the forms say about a model, from its card (the worker's ``list_models`` entry; client module).

The card's fields are the Predictor's (``nscfate``'s ``ModelInfo.card``): name, version, task, arch,
classes, trained_on, synthetic_training_data, test_accuracy, grouped_test_accuracy, ...
"""

SYNTHETIC_NOTE = "It has never seen real cells: its predictions are for trying the tool only."


def card_for(cards, name):
    """The card of the model an upload picking ``name`` goes to (no name: the default model)."""
    cards = [c for c in cards or [] if isinstance(c, dict)]
    for c in cards:
        if name and c.get("name") == name:
            return c
    for c in cards:
        if c.get("default"):
            return c
    return cards[0] if cards else None


def trained_on_text(card):
    """What the model was trained on, as one sentence or two; a model trained on synthetic data says so."""
    what = str(card.get("trained_on") or "not stated").rstrip(". ")
    if card.get("synthetic_training_data"):
        if what.startswith("SYNTHETIC "):  # older cards repeat what the label says
            what = what[len("SYNTHETIC "):]
        return "Trained on SYNTHETIC data: %s. %s" % (what, SYNTHETIC_NOTE)
    return "Trained on: %s." % what


def held_out_text(card):
    """The held-out accuracy the card reports: the random test split, and the held-out acquisition batches
    (the honest figure when batches differ)."""
    test_is = {"random": "random test split", "grouped": "test split by acquisition batch"}.get(
        card.get("test_split"), "test split")
    parts = []
    for key, what in (("test_accuracy", test_is), ("grouped_test_accuracy", "held-out acquisition batches")):
        value = card.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append("%.1f%% (%s)" % (100.0 * value, what))
    return "Held-out accuracy: " + ", ".join(parts) if parts else "No held-out accuracy reported"


def banner_text(card):
    """The line above the upload form: which model answers and what it was trained on."""
    if card is None:
        return "No prediction worker is connected: images cannot be classified right now."
    return "Predictions by %s %s (%s, %d classes). %s" % (
        card.get("name"), card.get("version") or "", card.get("arch") or "model", len(card.get("classes") or []),
        trained_on_text(card))
