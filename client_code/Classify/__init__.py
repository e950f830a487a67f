from ._anvil_designer import ClassifyTemplate
from anvil import *
import anvil.server

from .. import batches, cards, images


class Classify(ClassifyTemplate):
    """Upload cell images and show one result card per image."""

    def __init__(self, **properties):
        self.init_components(**properties)
        self.load_models()

    def load_models(self):
        try:
            model_cards = anvil.server.call("get_model_cards")
        except Exception as e:
            self.status_label.text = "No prediction worker is connected right now: %s" % e
            model_cards = []
        self.model_cards = model_cards
        self.model_dropdown.items = [("%s %s" % (c.get("name"), c.get("version") or ""), c.get("name"))
                                     for c in model_cards]
        self.show_model_note()

    def model_dropdown_change(self, **event_args):
        self.show_model_note()

    def show_model_note(self):
        """Which model the next upload goes to and what it was trained on (synthetic data: said plainly)."""
        card = cards.card_for(self.model_cards, self.model_dropdown.selected_value)
        self.model_note_label.text = cards.banner_text(card)
        warn = card is None or bool(card.get("synthetic_training_data"))
        self.model_note_label.foreground = "#8a5a00" if warn else ""
        self.model_note_label.bold = warn

    def file_loader_change(self, file, files, **event_args):
        self.status_label.text = "%d image(s) selected" % len(files)

    def classify_button_click(self, **event_args):
        files = list(self.file_loader.files)
        if not files:
            alert("Choose one or more cell images first.")
            return
        results = []
        self.classify_button.enabled = False
        try:
            # at most 16 images and 128 MB per call: the server refuses a bigger call as a whole
            for start, chunk in batches.upload_chunks(files):
                self.status_label.text = "Classifying images %d-%d of %d ..." % (
                    start + 1, start + len(chunk), len(files))
                out = anvil.server.call("classify_cell_images", chunk, experiment=self.experiment_box.text,
                                        notes=self.notes_box.text, model=self.model_dropdown.selected_value)
                for result in out:
                    result["image"] = chunk[result["index"]]
                    result["index"] = start + result["index"]
                images.attach_previews(out)  # one call for the chunk's TIFF previews
                results.extend(out)
                self.results_panel.items = results
        except Exception as e:
            alert("Classification stopped: %s" % e)
        finally:
            self.classify_button.enabled = True
        n_ok = len([r for r in results if r["ok"]])
        self.status_label.text = "%d classified and saved to the history, %d rejected" % (n_ok, len(results) - n_ok)

    def clear_button_click(self, **event_args):
        self.file_loader.clear()
        self.results_panel.items = []
        self.status_label.text = ""
