from ._anvil_designer import UserRowTemplate
from anvil import *
import anvil.server


class UserRow(UserRowTemplate):
    """One account: its role and whether it may sign in."""

    def __init__(self, **properties):
        self.init_components(**properties)

    def role_dropdown_change(self, **event_args):
        self.apply("set_user_role", self.role_dropdown.selected_value)

    def enabled_check_change(self, **event_args):
        self.apply("set_user_enabled", self.enabled_check.checked)

    def apply(self, function_name, value):
        try:
            anvil.server.call(function_name, self.item["id"], value)
        except Exception as e:
            alert("Not changed: %s" % e)
        self.parent.raise_event("x-changed")
