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
        self.meta_label.text = "%s by %s, experiment %s, model %s %s" % (
            p["created"].strftime("%Y-%m-%d %H:%M UTC"), p["user"], p["experiment"] or "-",
            p["model"]["name"], p["model"]["version"])
        self.notes_label.text = p["notes"] or ""
        self.warnings_label.text = "; ".join(p["warnings"])
        self.probability_plot.data, self.probability_plot.layout = charts.probability_bars(p)

    def gradcam_button_click(self, **event_args):
        images.show_gradcam(self, self.item["id"])
