"""core.serve: the HTTP model server (dynamic batching, limits, metrics, health, hot reload)."""

from core.serve.app import ModelHandle, ServeConfig, create_app
from core.serve.batcher import length_groups
from core.serve.predictor import (
    Binary,
    Conflict,
    ModelDirPredictor,
    NotFound,
    Predictor,
    Ready,
    Reply,
    RequestError,
    Route,
    RouteCall,
)
from core.serve.ui import UiPage

__all__ = [
    "Binary",
    "Conflict",
    "ModelDirPredictor",
    "ModelHandle",
    "NotFound",
    "Predictor",
    "Ready",
    "Reply",
    "RequestError",
    "Route",
    "RouteCall",
    "ServeConfig",
    "UiPage",
    "create_app",
    "length_groups",
]
