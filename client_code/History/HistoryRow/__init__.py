from ._anvil_designer import HistoryRowTemplate
from anvil import *
import anvil.server


class HistoryRow(HistoryRowTemplate):
    """One history row; the DataGrid shows the item's columns, this adds View and Delete."""

    def __init__(self, **properties):
        self.init_components(**properties)

    def view_link_click(self, **event_args):
        self.parent.raise_event("x-open", item=self.item)

    def delete_link_click(self, **event_args):
        if not confirm("Delete the prediction for %s and its stored image?" % self.item["filename"]):
            return
        try:
            anvil.server.call("delete_prediction", self.item["id"])
        except Exception as e:
            alert("Not deleted: %s" % e)
            return
        self.parent.raise_event("x-deleted")
