"""The apps that ship with streaminfer, written with the public API (``streaminfer.App``).

``--app classifier`` and ``--app recommender`` name them; each module's ``app(settings)``
builds the app, since its topics and model size come from settings.
"""
