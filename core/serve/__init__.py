"""core.serve: the HTTP model server (dynamic batching, limits, metrics, health, hot reload)."""

from core.serve.app import ModelHandle, ServeConfig, create_app
from core.serve.batcher import length_groups
from core.serve.predictor import (
    ModelDirPredictor,
    NotFound,
    Predictor,
    RequestError,
    Route,
    RouteCall,
)

__all__ = [
    "ModelDirPredictor",
    "ModelHandle",
    "NotFound",
    "Predictor",
    "RequestError",
    "Route",
    "RouteCall",
    "ServeConfig",
    "create_app",
    "length_groups",
]
