from ._anvil_designer import PredictionDetailTemplate
from anvil import *
import anvil.server

from ... import charts, images


class PredictionDetail(PredictionDetailTemplate):
    """A stored prediction in full: image, condition, probabilities, who made it and when."""

    def __init__(self, **properties):
        self.init_components(**properties)
        p = self.item
        image = images.displayable(p)
        self.image.visible = image is not None
        if image is not None:
            self.image.source = image
        self.condition_label.text = "%s (%s)" % (p["predicted_display_name"], charts.percent(p["confidence"]))
        self.show_tags()
        self.warnings_label.text = "; ".join(p["warnings"])
        self.probability_plot.data, self.probability_plot.layout = charts.probability_bars(p)
        self.edit_button.visible = bool(p["can_edit"])

    def show_tags(self):
        p = self.item
        self.meta_label.text = "%s by %s, experiment %s, model %s %s" % (
            p["created"].strftime("%Y-%m-%d %H:%M UTC"), p["user"], p["experiment"] or "-",
            p["model"]["name"], p["model"]["version"])
        self.notes_label.text = p["notes"] or ""

    def edit_button_click(self, **event_args):
        """Set the experiment and notes afterwards (files classified before the experiment was typed)."""
        self.experiment_box.text = self.item["experiment"] or ""
        self.notes_box.text = self.item["notes"] or ""
        self.edit_panel.visible, self.edit_button.visible = True, False

    def save_button_click(self, **event_args):
        try:
            self.item = anvil.server.call("update_prediction", self.item["id"],
                                          experiment=self.experiment_box.text.strip() or None,
                                          notes=self.notes_box.text.strip() or None)
        except Exception as e:  # e.g. an experiment name too long, or deleted meanwhile
            alert("Not saved: %s" % e)
            return
        self.show_tags()
        self.edit_panel.visible, self.edit_button.visible = False, True

    def gradcam_button_click(self, **event_args):
        images.show_gradcam(self, self.item["id"])
