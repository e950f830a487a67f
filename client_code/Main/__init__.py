from ._anvil_designer import MainTemplate
from anvil import *
import anvil.server
import anvil.users

from ..Admin import Admin
from ..Classify import Classify
from ..ExperimentSummary import ExperimentSummary
from ..History import History
from ..Models import Models


class Main(MainTemplate):
    """The app frame: navigation, sign-in/out, and the page being shown."""

    def __init__(self, **properties):
        self.session_info = None
        self.current_page = "classify"
        self.init_components(**properties)
        self.refresh_session()

    def nav_links(self):
        return {"classify": self.classify_link, "history": self.history_link,
                "summary": self.summary_link, "models": self.models_link, "admin": self.admin_link}

    def refresh_session(self):
        self.session_info = anvil.server.call("get_session_info")
        signed_in = self.session_info is not None
        self.user_label.text = self.session_info["email"] if signed_in else "Not signed in"
        self.sign_in_button.visible = not signed_in
        self.sign_out_button.visible = signed_in
        for link in self.nav_links().values():
            link.visible = signed_in  # (Anvil's Link has no `enabled`)
        self.admin_link.visible = signed_in and self.session_info["is_lab_admin"]
        self.show_page(self.current_page)

    def show_page(self, name):
        self.current_page = name
        self.content_panel.clear()
        if self.session_info is None:
            self.content_panel.add_component(
                Label(text="Sign in to classify cell images and to see the lab's prediction history."))
            return
        pages = {"classify": Classify, "history": History, "summary": ExperimentSummary,
                 "models": Models, "admin": Admin}
        self.content_panel.add_component(pages[name]())
        for key, link in self.nav_links().items():
            link.bold = key == name

    def classify_link_click(self, **event_args):
        self.show_page("classify")

    def history_link_click(self, **event_args):
        self.show_page("history")

    def summary_link_click(self, **event_args):
        self.show_page("summary")

    def models_link_click(self, **event_args):
        self.show_page("models")

    def admin_link_click(self, **event_args):
        self.show_page("admin")

    def sign_in_button_click(self, **event_args):
        anvil.users.login_with_form(allow_cancel=True)
        self.refresh_session()

    def sign_out_button_click(self, **event_args):
        anvil.users.logout()
        self.current_page = "classify"
        self.refresh_session()
