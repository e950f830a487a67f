from ._anvil_designer import ModelsTemplate
from anvil import *
import anvil.server


class Models(ModelsTemplate):
    """The model cards: what each served model was trained on, its metrics and plots."""

    def __init__(self, **properties):
        self.init_components(**properties)
        self.load()

    def load(self):
        try:
            cards = anvil.server.call("get_model_cards", plots=True)
        except Exception as e:
            self.status_label.text = "No prediction worker is connected right now: %s" % e
            self.models_panel.items = []
            return
        self.status_label.text = "%d model(s) served by the connected prediction workers" % len(cards)
        self.models_panel.items = cards

    def refresh_button_click(self, **event_args):
        self.load()
