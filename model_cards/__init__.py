"""Jinja templates of the model and dataset cards (installed as ``hf_corrector.model_cards``; see ``hf_corrector.hub.cards``)."""
