from ._anvil_designer import AdminTemplate
from anvil import *
import anvil.server


class Admin(AdminTemplate):
    """Lab admins enable accounts and set roles."""

    def __init__(self, **properties):
        self.init_components(**properties)
        self.users_panel.set_event_handler("x-changed", self.refresh_button_click)
        self.load()

    def load(self):
        try:
            self.users_panel.items = anvil.server.call("list_users")
        except Exception as e:
            alert("Could not list accounts: %s" % e)

    def refresh_button_click(self, **event_args):
        self.load()
