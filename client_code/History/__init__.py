from ._anvil_designer import HistoryTemplate
from anvil import *
import anvil.server

from .. import charts
from .PredictionDetail import PredictionDetail

PAGE_SIZE = 25


class History(HistoryTemplate):
    """The lab's predictions, newest first, filtered and paged on the server."""

    def __init__(self, **properties):
        self.page = 0
        self.pages = 0
        self.init_components(**properties)
        self.history_rows.set_event_handler("x-open", self.open_detail)
        self.history_rows.set_event_handler("x-deleted", self.row_deleted)
        self.load_conditions()
        self.load()

    def load_conditions(self):
        items = []
        try:
            for card in anvil.server.call("get_model_cards"):
                for c in card.get("classes") or []:
                    if (c["display_name"], c["key"]) not in items:
                        items.append((c["display_name"], c["key"]))
        except Exception:
            pass  # the filter still works for conditions typed into other filters; no worker needed to browse
        self.condition_dropdown.items = items

    def filters(self):
        filters = {
            "condition": self.condition_dropdown.selected_value,
            "date_from": self.date_from_picker.date,
            "date_to": self.date_to_picker.date,
            "experiment": self.experiment_box.text.strip() or None,
            "user": self.user_box.text.strip() or None,
        }
        return dict((k, v) for k, v in filters.items() if v)

    def load(self):
        try:
            result = anvil.server.call("search_predictions", self.filters(), self.page, PAGE_SIZE)
        except Exception as e:
            alert("Could not search the history: %s" % e)
            return
        if not result["rows"] and 0 < result["pages"] <= self.page:
            self.page = result["pages"] - 1  # the last page emptied (its last row deleted): show the one before
            return self.load()
        for row in result["rows"]:
            row["created_text"] = row["created"].strftime("%Y-%m-%d %H:%M")
            row["confidence_text"] = charts.percent(row["confidence"])
            # flagged predictions (no cell found, several objects, low confidence) say so in the list
            row["condition_text"] = row["predicted_display_name"] + (" (flagged)" if row["flags"] else "")
        self.history_rows.items = result["rows"]
        self.pages = result["pages"]
        self.page_label.text = "Page %d of %d (%d predictions)" % (
            min(self.page + 1, max(self.pages, 1)), max(self.pages, 1), result["total"])
        self.prev_button.enabled = self.page > 0
        self.next_button.enabled = self.page + 1 < self.pages

    def search_button_click(self, **event_args):
        self.page = 0
        self.load()

    def prev_button_click(self, **event_args):
        self.page = max(0, self.page - 1)
        self.load()

    def next_button_click(self, **event_args):
        self.page += 1
        self.load()

    def export_button_click(self, **event_args):
        try:
            csv_file = anvil.server.call("export_predictions_csv", self.filters())
        except Exception as e:  # e.g. a 'to' date before the 'from' date
            alert("Could not export the history: %s" % e)
            return
        download(csv_file)

    def open_detail(self, item, **event_args):
        try:
            detail = anvil.server.call("get_prediction", item["id"])
        except Exception as e:  # e.g. deleted meanwhile by its owner or a lab admin
            alert("Could not open this prediction: %s" % e)
            return
        alert(content=PredictionDetail(item=detail), large=True, title=detail["filename"])
        self.load()  # its experiment or notes may have been changed there

    def row_deleted(self, **event_args):
        self.load()
