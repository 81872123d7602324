"""The built-in classifier: a fixed-length feature vector in, P(label = 1) out, learning
online from labels on the feedback topic, joined to their events by ``event_id``.

It is an ordinary app: copy it to start your own.
"""

from __future__ import annotations

from streaminfer.models.base import Model
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.app import App, Input, Learning, Outputs
from streaminfer.streams.features import Features, array
from streaminfer.streams.settings import Settings

__all__ = ["app"]


def _model(settings: Settings) -> Model:
    tuning = {k: v for k, v in (("lr", settings.lr), ("optimizer", settings.optimizer),
                                ("l2", settings.l2)) if v is not None}
    return OnlineClassifier(settings.num_features, hidden=settings.hidden, seed=settings.seed,
                            device=settings.device, amp=settings.amp, **tuning)


def app(settings: Settings) -> App:
    """``schemas/event.avsc`` events on ``--events-topic``, labels on ``--feedback-topic``."""
    return App(
        "classifier",
        input=Input(settings.events_topic, schema="event"),
        features=Features(array("features", settings.num_features)),
        model=_model,
        outputs=Outputs(["score"], topic=settings.predictions_topic),
        learning=Learning(topic=settings.feedback_topic, schema="feedback", label="label",
                          loss="bce", batch_size=8, max_steps=8),
    )
