"""A seeded generator of customer-service messages and dialogues, with ground truth.

Messages: for every intent of ``config.INTENTS`` many templates, expanded from alternatives
``(a|b)`` and slot fields ``{order_id}``; then noise a real inbox has: typos, casing,
fillers, polite openings, long rambling context and a second, unrelated sentence. Slot
values are drawn from their own generators and their character spans are recorded. Dialogues:
multi-turn conversations that give slot values, correct them ("actually make that three") and
refer back to earlier ones ("the order I mentioned before"), with the gold state after every
turn. The same seed gives the same bytes. Not here: reading user files (``data.py``), the
tracker that is judged against these states (``state.py``). The hand-written evaluation set
(``resources/independent.jsonl``) was written apart from these templates and is never
generated from them.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.nlp_service.config import INTENTS, SynthConfig
from pipelines.nlp_service.data import Example, Span

# ------------------------------------------------------------------ slot values
_NUM_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_STREETS = ("Maple", "Station", "Church", "Mill", "Park", "Victoria", "Green", "Hill", "King")
_KINDS = ("Street", "Road", "Avenue", "Close", "Drive", "Way")
_TOWNS = ("Bristol", "Leeds", "Austin", "Denver", "Cork", "Perth", "Hamburg", "Lyon")
_GOODS = (
    "running shoes",
    "coffee machine",
    "wireless earbuds",
    "winter coat",
    "desk lamp",
    "yoga mat",
    "phone case",
    "gaming chair",
    "kettle",
    "backpack",
    "smart watch",
)
_PLANS = (
    "Premium plan",
    "Family plan",
    "Basic plan",
    "Pro tier",
    "Student plan",
    "Gold membership",
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")
_NAMES = ("sam", "alex", "maria", "li.wei", "j.smith", "omar", "k.novak", "priya")
_DOMAINS = ("example.com", "mail.net", "inbox.org", "post.co.uk")


def _order_id(r: random.Random) -> str:
    n = r.randint(10000, 9999999)
    return r.choice((f"{n}", f"#{n}", f"A-{n}", f"ORD{n}", f"{r.choice('BCKX')}{n}"))


def _amount(r: random.Random) -> str:
    v = r.choice((r.randint(5, 999), round(r.uniform(1, 2500), 2)))
    s = f"{v:.2f}" if isinstance(v, float) else str(v)
    return r.choice((s, f"${s}", f"£{s}", f"€{s}", s))


def _date(r: random.Random) -> str:
    d = r.randint(1, 28)
    return r.choice(
        (
            f"{r.choice(_MONTHS)} {d}",
            f"{d} {r.choice(_MONTHS)}",
            f"2026-{r.randint(1, 12):02d}-{d:02d}",
            f"{d}/{r.randint(1, 12)}",
            r.choice(("yesterday", "today", "last monday", "last week", "friday")),
        )
    )


def _phone(r: random.Random) -> str:
    a, b, c = r.randint(200, 999), r.randint(100, 999), r.randint(1000, 9999)
    return r.choice((f"{a}-{b}-{c}", f"({a}) {b} {c}", f"+44 7{b}{c}", f"0{a}{b}{c}"))


SLOT_VALUES = {
    "order_id": _order_id,
    "amount": _amount,
    "currency": lambda r: r.choice(("USD", "EUR", "GBP", "dollars", "euros", "pounds")),
    "date": _date,
    "card_last4": lambda r: f"{r.randint(0, 9999):04d}",
    "email": lambda r: f"{r.choice(_NAMES)}{r.randint(1, 99)}@{r.choice(_DOMAINS)}",
    "phone": _phone,
    "address": lambda r: (
        f"{r.randint(1, 250)} {r.choice(_STREETS)} {r.choice(_KINDS)}"
        + r.choice(("", f", {r.choice(_TOWNS)}"))
    ),
    "product": lambda r: r.choice(_GOODS),
    "plan": lambda r: r.choice(_PLANS),
    "quantity": lambda r: r.choice((str(r.randint(1, 12)), r.choice(_NUM_WORDS))),
}

# ------------------------------------------------------------------ templates
T: dict[str, tuple[str, ...]] = {
    "card_lost_or_stolen": (
        "(i|I've|we) (lost|misplaced) my (card|debit card|credit card|bank card)",
        "my (card|wallet with my card) (was|got) (stolen|taken|pickpocketed)",
        "(please|pls|can you) (block|freeze|cancel|deactivate) my card ending {card_last4}",
        "(card|my card) (is missing|has gone missing|disappeared)",
        "someone stole my (purse|bag|wallet) and my card was inside",
        "report a (lost|stolen) card",
        "i need a new card because mine was (lost|stolen)",
    ),
    "card_declined": (
        "my card (was|got|keeps getting) declined",
        "(why|how come) (is|was) my card (declined|rejected|not accepted)",
        "card ending {card_last4} (declined|rejected) (at the store|online|at checkout)",
        "the (machine|terminal|website) (won't take|rejects|refused) my card",
        "my (card|credit card) doesn't work (anymore|at shops|online)",
        "(purchase|transaction) of {amount} (was declined|got declined) on my card",
    ),
    "dispute_transaction": (
        "i (want to|need to|would like to) dispute (a|this) (charge|transaction|payment)",
        "(there's|there is) a (charge|payment) of {amount} (i don't recognize|i didn't make|that isn't right)",
        "i was (charged twice|double charged|overcharged) (on {date}|for one purchase|)",
        "(how do i|can i) (contest|challenge|dispute) a (payment|transaction) from {date}",
        "the merchant charged me {amount} (by mistake|wrongly|in error)",
        "(file|open) a (dispute|chargeback) for {amount}",
    ),
    "refund_status": (
        "(where|what happened to) (is|with) my refund( for order {order_id}|)",
        "(i'm still waiting|still waiting|i'm waiting) for (a|my) refund",
        "(has|did) my refund (of {amount}|) (been processed|go through|arrive)",
        "when (will|do) i (get|receive) my refund( for {product}|)",
        "refund (status|update) (for|on) order {order_id}",
        "(it's been|its been) (a week|two weeks|ages) and no refund (yet|)",
    ),
    "order_status": (
        "where is my order( {order_id}|)",
        "(track|tracking for) (my|order) (order|package|parcel)( {order_id}|)",
        "(has|did) my (order|package|{product}) (shipped|been sent|left yet)",
        "when (will|does) my (order|delivery|{product}) (arrive|get here|be delivered)",
        "(status|update) (of|on) order {order_id}",
        "my (order|package) (hasn't arrived|is late|never came)( yet|)",
    ),
    "cancel_order": (
        "(i want to|i'd like to|please|can i) cancel (my|the|this) order( {order_id}|)",
        "cancel order {order_id}",
        "i (don't want|no longer want|changed my mind about) the {product}(, cancel it|)",
        "(stop|halt) (the|my) order (before it ships|please|)",
        "(please |)cancel the {product} i ordered on {date}",
    ),
    "change_address": (
        "(i need to|i want to|please) (change|update) my (delivery|shipping|home|) address",
        "(change|update) (my|the) address to {address}",
        "my new address is {address}",
        "(ship|send|deliver) (it|my order|order {order_id}) to {address} instead",
        "i (moved|have moved|relocated)(, update my address|)",
    ),
    "reset_password": (
        "(i forgot|forgot|i can't remember) my password",
        "(reset|change|recover) my password( please|)",
        "(how do i|how can i) (reset|change) (my|the) password",
        "(the|my) password reset (link|email) (doesn't work|never arrived|expired)",
        "i need a (new|temporary) password",
    ),
    "account_locked": (
        "my account (is|got|has been) (locked|blocked|suspended|disabled)",
        "(i'm|i am|i got) locked out of my account",
        "(can't|cannot) (log in|sign in|access my account)(, it says locked|)",
        "(unlock|unblock|reactivate) my account( please|)",
        "too many (failed|wrong) (attempts|logins) and now (my account is|i'm) locked",
    ),
    "update_contact_details": (
        "(update|change) my (phone number|mobile number|number) to {phone}",
        "(update|change) my email( address|) to {email}",
        "my new (email|email address) is {email}",
        "my new (phone|number|mobile) is {phone}",
        "(i need to|i want to|please) (update|change) my contact (details|info|information)",
    ),
    "cancel_subscription": (
        "(cancel|end|stop) my (subscription|membership|plan)",
        "(i want to|i'd like to|how do i) (cancel|unsubscribe from) (the|my) {plan}",
        "(please |)(cancel|end) my {plan} subscription",
        "i (don't want|no longer want) to (renew|be subscribed)",
        "stop (the|my) (monthly|annual|yearly) (subscription|payments for my plan)",
    ),
    "upgrade_plan": (
        "(upgrade|move) me to the {plan}",
        "(i want to|i'd like to|can i) upgrade (my plan|my subscription|to {plan})",
        "(how much|what) (is|does it cost) (for|to get) the {plan}",
        "(switch|change) (my plan|me) to (a bigger|a higher|the {plan}) (plan|tier|)",
        "(what are|show me) the upgrade options",
    ),
    "billing_question": (
        "(i have a|a) question about my (bill|invoice|statement)",
        "why (is|was) my (bill|invoice) {amount} (this month|on {date}|)",
        "what is (the|this) (fee|charge) of {amount}( on my bill|)",
        "(can you|please) explain (my|the) (bill|invoice|charges)",
        "(send|email) me (a copy of|) my invoice( from {date}|)",
    ),
    "payment_failed": (
        "my payment (failed|didn't go through|was unsuccessful)",
        "(the|my) payment of {amount} (failed|bounced|was rejected)",
        "(why|how come) did my (payment|direct debit) fail( on {date}|)",
        "(i can't|unable to|cannot) (pay|make a payment|complete the payment)",
        "(error|an error) (when|while) (paying|making a payment|checking out)",
    ),
    "transfer_money": (
        "(transfer|send|move) {amount} to (my friend|my brother|account {card_last4}|savings)",
        "(i want to|i'd like to|how do i) (send|transfer) money( to {email}|)",
        "(make|do) a (bank |)transfer of {amount}( {currency}|)",
        "(send|pay) {amount} {currency} to (my landlord|a friend|{phone})",
        "(can i|how can i) (move|transfer) money between my accounts",
    ),
    "check_balance": (
        "(what's|what is|show me) my (account |)balance",
        "(check|see) my balance( please|)",
        "how much (money |)(do i have|is in my account|is left)",
        "balance (on|of) (my card ending {card_last4}|my savings|my account)",
        "(tell me|what's) (my|the) available (balance|funds)",
    ),
    "report_fraud": (
        "(i want to|i need to|i'd like to) report (fraud|a scam|fraudulent activity)",
        "(someone|somebody) (used|is using|accessed) my (account|card) without (permission|my consent)",
        "(there are|i see) (transactions|payments) i didn't make( on {date}|)",
        "i (think|believe) (i was|i've been) (scammed|hacked|phished)",
        "(suspicious|strange|fraudulent) (activity|charges|logins) on my account",
    ),
    "return_item": (
        "(i want to|i'd like to|how do i|can i) return (the|my|this) {product}",
        "(start|begin|open) a return( for order {order_id}|)",
        "(how do i|can i) send (back|) (my order|the item|{product}) (back|)",
        "(i need|send me) a return (label|form)( for {order_id}|)",
        "(what is|what's) your return policy",
    ),
    "damaged_item": (
        "(my|the) {product} (arrived|came|was delivered) (damaged|broken|cracked)",
        "(i received|received|got) a (damaged|broken|defective) (item|product|{product})",
        "(the|my) (package|box|parcel) was (damaged|crushed|torn) and the {product} is broken",
        "(order|item) {order_id} (arrived|came) (broken|damaged|in pieces)",
        "the {product} (doesn't work|is faulty|is scratched) out of the box",
    ),
    "speak_to_human": (
        "(i want to|let me|can i) (speak|talk) (to|with) (a human|a person|an agent|someone real)",
        "(connect|transfer) me to (an agent|a human|customer support|a representative)",
        "(human|agent|representative)( please|)",
        "(stop|no more) (bot|robot|automated replies), (i want|give me) a (person|human)",
        "(is there|get me) (a real person|an actual human|someone) (to help|i can talk to|)",
    ),
    "opening_hours": (
        "(what are|what're) your (opening|business|store) hours",
        "(when|what time) (do|does) (you|the store|the branch) (open|close)( on {date}|)",
        "(are you|is the branch|is the shop) open (on sundays|on weekends|today|on {date})",
        "(hours|opening times) (for|of) (the|your) (branch|store|support line)",
    ),
    "greeting": (
        "(hi|hello|hey|hey there|hi there|howdy)",
        "(good morning|good afternoon|good evening)",
        "(hello|hi), (is anyone there|can you help me)",
        "(greetings|hello again|yo)",
    ),
    "goodbye": (
        "(bye|goodbye|bye bye|cya)",
        "(thanks|thank you)(, that's all|, bye|, have a good day|)",
        "(that's all|that is everything|nothing else)(, thanks|)",
        "(talk to you later|see you|have a nice day)",
    ),
    "out_of_scope": (
        "(what's|what is) the (weather|forecast) (today|tomorrow|this weekend)",
        "(do you know|can you share|i'd love to hear) (a joke|a fun fact|a story)",
        "(who|what) (is|was) the (tallest mountain|best movie|fastest animal)( in the world|)",
        "(can you|please) (play|recommend) (some music|a song|a movie|a book)",
        "(how do i|how to) (cook|bake|make) (pasta|bread|a cake|pancakes)",
        "(what's|what is) {amount} (in|to) {currency}( in japanese yen|)",
        "(book|find) me a (flight|hotel|taxi|table) (to|for) (paris|tomorrow|two)",
        "(what is|explain) (quantum physics|the meaning of life|photosynthesis)",
        "(i'm|i am) (bored|hungry|sad)",
    ),
}
assert set(T) == set(INTENTS)

_OPENINGS = (
    "hi, ",
    "hello, ",
    "hey ",
    "good morning, ",
    "um ",
    "so ",
    "quick question: ",
    "excuse me, ",
    "",
    "",
    "",
    "",
)
_CLOSINGS = (" please", " thanks", " thank you", " asap", "?", "!", ".", " :(", "", "", "", "")
_RAMBLE = (
    "I've been a customer for years and never had a problem.",
    "Sorry for the long message, it's been a stressful week.",
    "I tried the app and the website already.",
    "My daughter usually handles this but she's away.",
    "I called yesterday but nobody picked up.",
    "This is the third time I'm writing about this.",
    "I'm on my lunch break so I don't have much time.",
)
_ASIDE = (
    " Also the app is really slow lately.",
    " By the way your website looks great.",
    " Hope you're having a good day.",
    " I'm writing from my partner's phone.",
)


def _expand(template: str, r: random.Random) -> list[tuple[str, str | None]]:
    """Template -> segments ``(text, slot or None)`` (alternatives chosen, slots filled)."""
    while "(" in template:
        template = re.sub(
            r"\(([^()]*)\)", lambda m: r.choice(m.group(1).split("|")), template, count=1
        )
    out: list[tuple[str, str | None]] = []
    for part in re.split(r"(\{[a-z_0-9]+\})", template):
        if part.startswith("{"):
            slot = part[1:-1]
            out.append((SLOT_VALUES[slot](r), "product" if slot == "plan" else slot))
        elif part:
            out.append((part, None))
    return out


def _typo(word: str, r: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = r.randrange(1, len(word) - 1)
    op = r.randrange(3)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _noisy(text: str, r: random.Random, typo_rate: float, case: str) -> str:
    words = text.split(" ")
    words = [_typo(w, r) if r.random() < typo_rate else w for w in words]
    s = " ".join(words)
    return s.lower() if case == "lower" else s.upper() if case == "upper" else s


def assemble(segments: list[tuple[str, str | None]]) -> tuple[str, list[Span]]:
    text, spans = "", []
    for seg, slot in segments:
        if slot is not None and seg:
            spans.append(Span(slot, len(text), len(text) + len(seg)))
        text += seg
    return text, spans


def message(intent: str, r: random.Random, cfg: SynthConfig) -> Example:
    """One generated message of ``intent`` with its slot spans."""
    segs = _expand(r.choice(T[intent]), r)
    case = r.choices(("keep", "lower", "upper", "capital"), (0.45, 0.4, 0.03, 0.12))[0]
    segs = [(s if slot else _noisy(s, r, cfg.typo_rate, case), slot) for s, slot in segs]
    if case == "capital" and segs and segs[0][1] is None:
        segs[0] = (segs[0][0][:1].upper() + segs[0][0][1:], None)
    head = r.choice(_OPENINGS)
    if intent not in ("greeting", "goodbye") and r.random() < 0.12:
        head = " ".join(r.sample(_RAMBLE, r.randint(1, 3))) + " " + head
    tail = r.choice(_CLOSINGS)
    if intent not in ("greeting", "goodbye") and r.random() < 0.08:
        tail += r.choice(_ASIDE)
    if intent in ("greeting", "goodbye"):
        head = ""
    text, spans = assemble([(head, None), *segs, (tail, None)])
    return Example(text, intent, spans)


def messages(cfg: SynthConfig, intents: tuple[str, ...] = INTENTS) -> list[Example]:
    """``cfg.per_intent`` messages of every intent, shuffled, deterministic in ``cfg.seed``."""
    r = random.Random(cfg.seed)
    out = [message(i, r, cfg) for i in intents for _ in range(cfg.per_intent)]
    r.shuffle(out)
    return out


# ------------------------------------------------------------------ dialogues
@dataclass
class Turn:
    text: str
    intent: str
    slots: list[Span]
    state: dict[str, str]  # gold dialogue state after this turn (normalized values)


@dataclass
class Dialogue:
    turns: list[Turn] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "turns": [
                {
                    "text": t.text,
                    "intent": t.intent,
                    "slots": [{"slot": s.slot, "start": s.start, "end": s.end} for s in t.slots],
                    "state": t.state,
                }
                for t in self.turns
            ]
        }


_GIVE = {
    "order_id": ("my order number is {order_id}", "it's order {order_id}", "order {order_id}"),
    "quantity": ("i ordered {quantity} of them", "{quantity} please", "quantity {quantity}"),
    "product": ("it's the {product}", "the item is the {product}", "about my {product}"),
    "email": ("my email is {email}", "you can reach me at {email}"),
    "date": ("it was on {date}", "i ordered it {date}"),
    "amount": ("the amount was {amount}", "it cost {amount}"),
}
_CORRECT = (
    "actually make that {v}",
    "sorry, i meant {v}",
    "no wait, it's {v}",
    "correction: {v}",
    "actually it's {v}, not what i said",
)
_REFER_PREV = (
    "go back to the order i mentioned before",
    "actually, the previous order please",
    "no, the order i gave you earlier",
)
_REFER_FIRST = ("the first order i mentioned", "let's go with the first order")


def dialogue(r: random.Random, cfg: SynthConfig) -> Dialogue:
    """A conversation about an order: slots given, corrected and referred back to."""
    from pipelines.nlp_service.state import normalize

    intent = r.choice(("order_status", "cancel_order", "return_item", "damaged_item"))
    state: dict[str, str] = {}
    orders: list[str] = []
    d = Dialogue()
    first = message(intent, r, cfg)
    for s in first.slots:
        state[s.slot] = normalize(s.slot, first.text[s.start : s.end])
        if s.slot == "order_id":
            orders.append(state["order_id"])
    d.turns.append(Turn(first.text, intent, first.slots, dict(state)))
    for _ in range(r.randint(2, 5)):
        move = r.choices(("give", "correct", "refer"), (0.55, 0.3, 0.15))[0]
        if move == "refer" and len(set(orders)) >= 2:
            if r.random() < 0.5:
                text = r.choice(_REFER_PREV)
                cur = state["order_id"]
                prev = [o for o in orders if o != cur]
                state["order_id"] = prev[-1]
            else:
                text = r.choice(_REFER_FIRST)
                state["order_id"] = orders[0]
            d.turns.append(Turn(text, intent, [], dict(state)))
            continue
        if move == "correct" and state:
            slot = r.choice(
                sorted(k for k in state if k in ("quantity", "order_id", "date")) or [""]
            )
            if slot:
                value = SLOT_VALUES[slot](r)
                text, spans = assemble(
                    [(p, None) if p != "\0" else (value, slot) for p in _split(r.choice(_CORRECT))]
                )
                state[slot] = normalize(slot, value)
                if slot == "order_id":
                    orders.append(state[slot])
                d.turns.append(Turn(text, intent, spans, dict(state)))
                continue
        slot = r.choice(sorted(_GIVE))
        segs = _expand(r.choice(_GIVE[slot]), r)
        text, spans = assemble(segs)
        for s in spans:
            state[s.slot] = normalize(s.slot, text[s.start : s.end])
            if s.slot == "order_id":
                orders.append(state["order_id"])
        d.turns.append(Turn(text, intent, spans, dict(state)))
    return d


def _split(template: str) -> list[str]:
    a, _, b = template.partition("{v}")
    return [a, "\0", b]


def dialogues(cfg: SynthConfig) -> list[Dialogue]:
    r = random.Random(cfg.seed + 7919)
    return [dialogue(r, cfg) for _ in range(cfg.dialogues)]


def write_dataset(cfg: SynthConfig, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``messages.jsonl`` and ``dialogues.jsonl`` under ``out_dir`` (atomic writes)."""
    from core.atomic import atomic_write_text
    from pipelines.nlp_service.data import write_examples

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"messages": write_examples(messages(cfg), out / "messages.jsonl")}
    atomic_write_text(
        out / "dialogues.jsonl",
        "".join(json.dumps(d.to_json()) + "\n" for d in dialogues(cfg)),
    )
    paths["dialogues"] = out / "dialogues.jsonl"
    return paths


# ------------------------------------------------------------------ long conversations
PLANS = _PLANS  # the classes of the long-context question "which plan is 'it'?"
_FACT = (
    "by the way i'm on the {plan} at the moment",
    "just so you know, my subscription is the {plan}",
    "i signed up for the {plan} last year",
)
_ASK = (
    "ok, please cancel it now",
    "right, i want to cancel that subscription i told you about",
    "can you end it for me today",
)


@dataclass
class LongConversation:
    turns: list[str]
    plan: int  # index into PLANS: the plan named once, early
    fact_turn: int


def long_conversation(
    r: random.Random, chars: int, cfg: SynthConfig, fact_within: float = 0.1
) -> LongConversation:
    """About ``chars`` characters of turns (roughly chars / 4.5 tokens): filler messages of
    every intent that names no plan, one turn within the first ``fact_within`` of the turns
    naming the customer's plan, and a last turn asking to cancel "it"."""
    filler_intents = [i for i in INTENTS if i not in ("cancel_subscription", "upgrade_plan")]
    turns: list[str] = []
    total = 0
    while total < chars:
        t = message(r.choice(filler_intents), r, cfg).text
        if any(p.lower() in t.lower() for p in _PLANS):
            continue
        turns.append(t)
        total += len(t) + 7
    plan = r.randrange(len(_PLANS))
    at = r.randrange(max(1, int(len(turns) * fact_within)))
    turns.insert(at, r.choice(_FACT).format(plan=_PLANS[plan]))
    turns.append(r.choice(_ASK))
    return LongConversation(turns, plan, at)
