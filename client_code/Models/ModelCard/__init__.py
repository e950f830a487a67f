from ._anvil_designer import ModelCardTemplate
from anvil import *


def _format_metric(value):
    if isinstance(value, float):
        return "%.3f" % value
    return str(value)


class ModelCard(ModelCardTemplate):
    """One model card as the worker describes it (fields it does not send are left out)."""

    def __init__(self, **properties):
        self.init_components(**properties)
        card = self.item
        self.name_label.text = "%s %s" % (card.get("name"), card.get("version") or "")
        classes = card.get("classes") or []
        names = [c["display_name"] if isinstance(c, dict) else str(c) for c in classes]
        self.task_label.text = "Task: %s - %s" % (card.get("task") or "?", ", ".join(names))
        self.trained_on_label.text = "Trained on: %s" % (card.get("trained_on") or card.get("data") or "not stated")
        metrics = card.get("metrics") or {}
        self.metrics_label.text = "Held-out metrics: " + (", ".join(
            "%s %s" % (k, _format_metric(v)) for k, v in sorted(metrics.items())
            if not isinstance(v, (dict, list))) or "none reported")
        self.description_text.content = card.get("readme") or card.get("description") or ""
        for plot in card.get("plots") or []:
            source = plot.get("image") if isinstance(plot, dict) else plot
            if source is not None:
                self.plots_panel.add_component(Image(source=source, height="220", display_mode="shrink_to_fit"))
