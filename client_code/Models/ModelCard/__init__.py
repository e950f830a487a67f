from ._anvil_designer import ModelCardTemplate
from anvil import *

from ... import cards


class ModelCard(ModelCardTemplate):
    """One model card as the worker describes it (fields it does not send are left out)."""

    def __init__(self, **properties):
        self.init_components(**properties)
        card = self.item
        self.name_label.text = "%s %s" % (card.get("name"), card.get("version") or "")
        classes = card.get("classes") or []
        names = [c["display_name"] if isinstance(c, dict) else str(c) for c in classes]
        self.task_label.text = "Task: %s - %s" % (card.get("task") or "?", ", ".join(names))
        self.trained_on_label.text = cards.trained_on_text(card)
        if card.get("synthetic_training_data"):
            self.trained_on_label.foreground = "#8a5a00"
            self.trained_on_label.bold = True
        self.metrics_label.text = cards.held_out_text(card)
        for plot in card.get("plots") or []:
            source = plot.get("image") if isinstance(plot, dict) else plot
            if source is not None:
                self.plots_panel.add_component(Image(source=source, height="220", display_mode="shrink_to_fit"))
