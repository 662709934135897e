"""Configuration of the nlp_service stages: one dataclass per stage, safe laptop defaults.

Also the fixed vocabularies every room shares: the default intent taxonomy (``INTENTS``),
the slot types the tagger knows (``SLOTS``) and their BIO tag set (``TAGS``). Units: lengths
in characters (``*_chars``) or tokenizer tokens (``*_tokens``). Not here: the templates of the
generator (``synth.py``), the reply templates (``deploy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConfigError
from core.typedconfig import check_types

#: The default taxonomy (exact names). ``out_of_scope`` is a class and the rejection label.
INTENTS = (
    "card_lost_or_stolen",
    "card_declined",
    "dispute_transaction",
    "refund_status",
    "order_status",
    "cancel_order",
    "change_address",
    "reset_password",
    "account_locked",
    "update_contact_details",
    "cancel_subscription",
    "upgrade_plan",
    "billing_question",
    "payment_failed",
    "transfer_money",
    "check_balance",
    "report_fraud",
    "return_item",
    "damaged_item",
    "speak_to_human",
    "opening_hours",
    "greeting",
    "goodbye",
    "out_of_scope",
)
OOS = "out_of_scope"

#: Slot types the tagger marks (BIO over word pieces).
SLOTS = (
    "order_id",
    "amount",
    "currency",
    "date",
    "card_last4",
    "email",
    "phone",
    "address",
    "product",
    "quantity",
)
TAGS = ("O", *(f"{p}-{s}" for s in SLOTS for p in ("B", "I")))


@dataclass
class EncoderConfig:
    """The sentence encoder and how text reaches it."""

    path: str | None = None  # a local transformers folder; None: the packaged all-MiniLM-L6-v2
    max_tokens: int = 128  # tokens per message the classifier sees (longer: the last ones kept)

    def __post_init__(self) -> None:
        check_types(self)
        if not 8 <= self.max_tokens <= 512:
            raise ConfigError("max_tokens must lie in [8, 512]", fix="use e.g. 128")


@dataclass
class SynthConfig:
    """The seeded message and dialogue generator."""

    per_intent: int = 120  # generated messages per intent
    dialogues: int = 200  # multi-turn dialogues with gold state per turn
    typo_rate: float = 0.08  # chance that a word gets one typo
    seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        if self.per_intent < 2 or self.dialogues < 0:
            raise ConfigError("per_intent must be >= 2 and dialogues >= 0", fix="use defaults")
        if not 0.0 <= self.typo_rate <= 0.5:
            raise ConfigError("typo_rate must lie in [0, 0.5]", fix="use e.g. 0.08")


@dataclass
class TrainConfig:
    """One intent + slot training run."""

    data: str | None = None  # a JSONL/CSV file of {"text", "intent"[, "slots"]}; None: generate
    out_dir: str = "data/runs/nlp_service/model"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    few_shot: int | None = None  # K examples per intent: SetFit-style contrastive + head
    epochs: int = 3  # full fine-tuning epochs
    batch_size: int = 32
    lr: float = 5e-5  # encoder learning rate (heads get 20x)
    pairs_per_example: int = 8  # few-shot: contrastive pairs drawn per example
    contrastive_epochs: int = 1
    valid_fraction: float = 0.15  # held out to choose the out-of-scope threshold
    max_steps: int | None = None  # cap on optimizer steps per phase (tests, demo)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, cls in (("encoder", EncoderConfig), ("synth", SynthConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        check_types(self)
        if self.few_shot is not None and not 2 <= self.few_shot <= 64:
            raise ConfigError("few_shot must lie in [2, 64]", fix="use e.g. 8 or 16")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2", fix="use defaults")
        if not 0.0 < self.valid_fraction < 0.5:
            raise ConfigError("valid_fraction must lie in (0, 0.5)", fix="use e.g. 0.15")


@dataclass
class DialogueConfig:
    """Dialogue policy at serving time."""

    escalate_after_failures: int = 2  # consecutive out-of-scope/low-confidence turns
    max_turn_chars: int = 4000  # a message longer than this (characters) is refused (422)
    max_turn_tokens: int = 256  # a message longer than this (tokens) is refused (422)
    history_tokens: int = 16384  # conversation context kept; older turns are dropped, and said so
    store: str = "data/runs/nlp_service/conversations.sqlite"  # the conversation store

    def __post_init__(self) -> None:
        check_types(self)
        if self.escalate_after_failures < 1 or self.max_turn_tokens < 8 or self.max_turn_chars < 1:
            raise ConfigError("escalate_after_failures >= 1, max_turn_tokens >= 8", fix="defaults")


@dataclass
class LongConfig:
    """The long-context encoder and its continued training on long conversations."""

    max_positions: int = 16384  # positions after extension (the 512 learned ones, copied)
    window: int = 256  # sliding window per side, every layer
    train_conversations: int = 96  # long conversations of the continued training
    train_chars: int = 9000  # their length (~2K tokens: a fact 2K tokens back; cheap on CPU)
    eval_conversations: int = 24  # held apart, another seed
    eval_chars: int = 60000  # ~15K tokens (about 4 characters a token): all of it fits in 16K
    epochs: int = 2
    lr: float = 3e-5
    seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        if not 512 <= self.max_positions <= 65536 or self.window < 1:
            raise ConfigError("max_positions in [512, 65536] and window >= 1", fix="defaults")
