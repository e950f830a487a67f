from ._anvil_designer import ResultCardTemplate
from anvil import *
import anvil.server

from ... import charts, images


class ResultCard(ResultCardTemplate):
    """One image's result: the image, the predicted condition and probabilities, or why it was rejected."""

    def __init__(self, **properties):
        self.init_components(**properties)
        result = self.item
        self.filename_label.text = result["filename"]
        image = images.displayable(result) if result["ok"] else None
        self.image.visible = image is not None
        if image is not None:
            self.image.source = image
        if not result["ok"]:
            self.show_rejection(result["error"])
            return
        if result["no_cell"]:
            # with no cell in the image the probabilities describe nothing: say so first
            self.condition_label.text = "No cell found - not a meaningful prediction (the model said %s)" % (
                result["predicted_display_name"])
        else:
            self.condition_label.text = "Predicted condition: %s" % result["predicted_display_name"]
        self.confidence_label.text = "Probability %s (model %s %s)" % (
            charts.percent(result["confidence"]), result["model"]["name"], result["model"]["version"])
        self.probability_plot.data, self.probability_plot.layout = charts.probability_bars(result)
        if result["warnings"]:
            self.warnings_label.text = "Note: " + "; ".join(result["warnings"])
            self.warnings_label.visible = True

    def show_rejection(self, error):
        label = "Not classified (send it again)" if error.get("retry_later") else "Rejected"
        self.error_label.text = "%s: %s" % (label, error["message"])
        self.error_label.visible = True
        for component in (self.condition_label, self.confidence_label, self.probability_plot, self.gradcam_button):
            component.visible = False

    def gradcam_button_click(self, **event_args):
        images.show_gradcam(self, self.item["id"])
