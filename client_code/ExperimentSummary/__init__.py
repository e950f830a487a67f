from ._anvil_designer import ExperimentSummaryTemplate
from anvil import *
import anvil.server

from .. import charts


class ExperimentSummary(ExperimentSummaryTemplate):
    """The number a lab wants from a batch: which share of its cells points to each condition."""

    def __init__(self, **properties):
        self.summary = None
        self.init_components(**properties)

    def summarise_button_click(self, **event_args):
        try:
            self.summary = anvil.server.call("experiment_summary", self.experiment_box.text)
        except Exception as e:
            alert("No summary: %s" % e)
            return
        models = self.summary["models"]
        if not models:
            self.summary_label.text = "No predictions for experiment '%s' yet." % self.summary["experiment"]
            self.share_plot.visible = self.summary_grid.visible = self.model_dropdown.visible = False
            return
        self.model_dropdown.items = [("%s %s (%d cells)" % (m["model"]["name"], m["model"]["version"], m["n_cells"]), i)
                                     for i, m in enumerate(models)]
        self.model_dropdown.selected_value = 0
        self.model_dropdown.visible = len(models) > 1
        self.show_model(0)

    def model_dropdown_change(self, **event_args):
        self.show_model(self.model_dropdown.selected_value)

    def show_model(self, index):
        group = self.summary["models"][index]
        self.summary_label.text = "%s: %d cells classified by %s %s" % (
            self.summary["experiment"], group["n_cells"], group["model"]["name"], group["model"]["version"])
        left_out = group.get("left_out") or {}
        if left_out:
            self.summary_label.text += " (left out of the shares: %s)" % "; ".join(
                "%d %s" % (n, why) for why, n in sorted(left_out.items()))
        if group.get("repeats"):
            self.summary_label.text += "; %d repeated upload(s) of an image counted once" % group["repeats"]
        rows = []
        for c in group["conditions"]:
            row = dict(c)
            row["share_text"] = charts.percent(c["share"])
            row["interval_text"] = "%s - %s" % (charts.percent(c["low"]), charts.percent(c["high"]))
            row["mean_probability_text"] = charts.percent(c["mean_probability"])
            rows.append(row)
        self.summary_rows.items = rows
        self.share_plot.data, self.share_plot.layout = charts.share_bars(group["conditions"])
        self.share_plot.visible = self.summary_grid.visible = True
