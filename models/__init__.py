"""PyTorch models for streaminfer, all with one surface: ``predict``, ``learn``, state.

The stream code needs only :func:`create_model`, the :class:`Model` surface and the
:mod:`models.checkpoint` functions; everything else is detail of one model or another.
"""

from models.base import Model, ModelVersion
from models.checkpoint import latest, load, prune, read_manifest, save
from models.classifier import OnlineClassifier
from models.device import Runner, configure_threads, resolve_device
from models.factory import APPS, create_model
from models.identity import IdentityModel
from models.optim import OptimizerSet, build_optimizer
from models.recommender import Interactions, MatrixFactorization, RowBatch
from models.vocab import Vocabulary

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
