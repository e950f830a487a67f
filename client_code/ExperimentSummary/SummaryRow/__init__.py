from ._anvil_designer import SummaryRowTemplate
from anvil import *


class SummaryRow(SummaryRowTemplate):
    """One condition of the summary table (the DataGrid displays the item's columns)."""

    def __init__(self, **properties):
        self.init_components(**properties)
