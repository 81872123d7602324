"""PyTorch models for streaminfer, all with one surface: ``predict``, ``learn``, state.

The stream code needs only :func:`create_model`, the :class:`Model` surface and the
:mod:`models.checkpoint` functions; everything else is detail of one model or another.
"""

from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.checkpoint import latest, load, prune, read_manifest, save
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.device import Runner, configure_threads, resolve_device
from streaminfer.models.factory import APPS, create_model
from streaminfer.models.identity import IdentityModel
from streaminfer.models.optim import OptimizerSet, build_optimizer
from streaminfer.models.recommender import Interactions, MatrixFactorization, RowBatch
from streaminfer.models.vocab import Vocabulary

__all__ = [
    "APPS",
    "IdentityModel",
    "Interactions",
    "MatrixFactorization",
    "Model",
    "ModelVersion",
    "OnlineClassifier",
    "OptimizerSet",
    "RowBatch",
    "Runner",
    "Vocabulary",
    "build_optimizer",
    "configure_threads",
    "create_model",
    "latest",
    "load",
    "prune",
    "read_manifest",
    "resolve_device",
    "save",
]
