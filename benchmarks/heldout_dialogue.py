"""A held-out message and dialogue generator for nlp_service: other phrasings, other noise.

Nothing in ``pipelines/nlp_service`` imports this; training never sees it. It differs from
``pipelines/nlp_service/synth.py`` on purpose:

- phrasings: its own templates for every intent, written apart from the pipeline's —
  longer, more formal, indirect ("I was wondering whether...", "Could somebody please...");
- noise: keyboard-neighbour typos (not swaps and drops), doubled spaces, sentence case,
  e-mail style greetings and signatures ("Kind regards, Tom");
- slot values: other formats (order numbers like ``SO-2026-00417``, amounts like
  ``USD 49.99`` — the code a ``currency`` span of its own, as the slot schema has it — dates
  like ``the 3rd of May``), other products and streets;
- dialogues: other wordings for giving a value ("the reference is ..."), correcting it
  ("change that to ...", "my mistake, ...") and referring back ("the one from earlier",
  "the original order").

Gold states use the pipeline's ``state.normalize`` (the definition of a value), not its
tracker rules.
"""

from __future__ import annotations

import random
import re

from pipelines.nlp_service.data import Example, Span
from pipelines.nlp_service.state import normalize
from pipelines.nlp_service.synth import Dialogue, Turn

_GOODS = ("standing desk", "air fryer", "hiking boots", "bluetooth speaker", "rain jacket",
          "office chair", "toaster", "tablet stand", "duvet cover")  # fmt: skip
_PLANS = ("Unlimited plan", "Plus tier", "Business plan", "Starter plan")


def _val(slot: str, r: random.Random) -> tuple[str, str]:
    if slot == "order_id":
        return r.choice((f"SO-2026-{r.randint(1, 99999):05d}", f"{r.randint(100000, 999999)}",
                         f"W{r.randint(1000000, 9999999)}")), "order_id"  # fmt: skip
    if slot == "amount":
        v = f"{r.randint(2, 3000)}.{r.randint(0, 99):02d}"
        return r.choice((f"USD {v}", f"{v} EUR", f"£{v}", v)), "amount"
    if slot == "date":
        day = r.randint(1, 28)
        suf = "th" if 10 <= day <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        return r.choice((f"the {day}{suf} of May", f"{day}.{r.randint(1, 12)}.2026",
                         "the day before yesterday", "this morning")), "date"  # fmt: skip
    if slot == "card_last4":
        return f"{r.randint(0, 9999):04d}", "card_last4"
    if slot == "email":
        return (
            f"{r.choice(('tom', 'ana.b', 'r.khan', 'leo'))}@{r.choice(('corp.io', 'web.de'))}",
            "email",
        )
    if slot == "phone":
        return f"+1 {r.randint(200, 999)} {r.randint(200, 999)} {r.randint(1000, 9999)}", "phone"
    if slot == "address":
        return (
            f"Flat {r.randint(1, 40)}, {r.randint(2, 90)} {r.choice(('Elm', 'Quay', 'Abbey'))} Lane",
            "address",
        )
    if slot == "plan":
        return r.choice(_PLANS), "product"
    if slot == "product":
        return r.choice(_GOODS), "product"
    if slot == "quantity":
        return r.choice(("2", "4", "three", "five", "six")), "quantity"
    raise KeyError(slot)


T = {
    "card_lost_or_stolen": ("I am afraid my bank card has been stolen from my coat, could you stop it?",
                            "Could somebody please put a block on card {card_last4}, I no longer have it."),
    "card_declined": ("I was wondering why my card gets refused every single time I shop online.",
                      "The card ending {card_last4} did not work at the supermarket today, why?"),
    "dispute_transaction": ("I would like to query a payment of {amount} which I never authorised.",
                            "Please look into the amount of {amount} taken on {date}, it is wrong."),
    "refund_status": ("Could you confirm whether the money for my return has been sent back yet?",
                      "Any news on the reimbursement for order {order_id}?"),
    "order_status": ("Could you let me know where order {order_id} currently is?",
                     "I have been expecting my {product} for days, has it been dispatched?"),
    "cancel_order": ("I placed order {order_id} by mistake, please do not process it.",
                     "Is it still possible to withdraw my order for the {product}?"),
    "change_address": ("Please note that I now live at {address}.",
                       "Could the delivery for {order_id} go to {address} rather than my old home?"),
    "reset_password": ("I have been unable to remember my login password, how can I set a fresh one?",
                       "The link to create a new password never reached my inbox."),
    "account_locked": ("Access to my online account has been denied since this morning.",
                       "I keep being told that my profile is blocked when I try to sign in."),
    "update_contact_details": ("Kindly replace the email on file with {email}.",
                               "Please store {phone} as my telephone number from now on."),
    "cancel_subscription": ("I would like to discontinue my {plan} at the end of this month.",
                            "Please terminate the recurring membership, I will not renew."),
    "upgrade_plan": ("I am interested in moving up to the {plan}, what would that involve?",
                     "Is there a way to get a larger package than the one I have?"),
    "billing_question": ("Could you clarify the charge of {amount} on my most recent statement?",
                         "I do not follow how this month's bill was calculated."),
    "payment_failed": ("My attempt to pay {amount} was rejected with an error, what happened?",
                       "The instalment on {date} did not succeed, apparently."),
    "transfer_money": ("Could you help me move {amount} across to my partner's account?",
                       "I need to pay {amount} to a colleague, how does that work?"),
    "check_balance": ("Could you tell me how much remains in my current account?",
                      "What funds are available on card {card_last4} at the moment?"),
    "report_fraud": ("I believe a criminal has gained access to my account and made payments.",
                     "Payments appeared on {date} that I certainly did not make, please investigate."),
    "return_item": ("I wish to send the {product} back as it is not suitable.",
                    "What is the procedure for returning order {order_id}?"),
    "damaged_item": ("Unfortunately the {product} was delivered with a broken part.",
                     "Order {order_id} turned up dented and unusable."),
    "speak_to_human": ("Would it be possible to be put through to a member of staff?",
                       "I would prefer to discuss this with a real advisor, not an automated system."),
    "opening_hours": ("Could you tell me at what time your branch opens on {date}?",
                      "Until what time is the helpline staffed in the evening?"),
    "greeting": ("Good day to you.", "Hello, I hope you are well."),
    "goodbye": ("That is all I needed, many thanks.", "Thank you for your help, farewell."),
    "out_of_scope": ("Could you suggest a nice place to go hiking this weekend?",
                     "What would be a good name for my new puppy?",
                     "How long should I boil an egg for?"),
}  # fmt: skip
_KEYS = "qwertyuiop asdfghjkl zxcvbnm"
_NEAR = {c: (_KEYS[i - 1] if i else "") + (_KEYS[i + 1] if i + 1 < len(_KEYS) else "")
         for i, c in enumerate(_KEYS) if c != " "}  # fmt: skip
_HEAD = ("", "", "Dear team, ", "Hello, ", "Good afternoon. ")
_TAIL = ("", "", " Kind regards, Tom", " Many thanks in advance.", " Best, Ana")


def _noise(text: str, r: random.Random) -> str:
    out = []
    for ch in text:
        near = _NEAR.get(ch.lower())
        out.append(r.choice(near.replace(" ", "") or ch) if near and r.random() < 0.02 else ch)
    s = "".join(out)
    return s.replace(" ", "  ", 1) if r.random() < 0.2 else s


def _spans(slot: str, v: str, at: int) -> list[Span]:
    """The spans of a value written at ``at``: a currency code beside an amount is its own
    ``currency`` span, as the slot schema has it (``"49.99 EUR"`` -> amount + currency)."""
    m = re.fullmatch(r"([A-Z]{3}) (.+)|(.+) ([A-Z]{3})", v) if slot == "amount" else None
    if m is None:
        return [Span(slot, at, at + len(v))]
    if m.group(1):
        return [Span("currency", at, at + 3), Span("amount", at + 4, at + len(v))]
    return [
        Span("amount", at, at + len(m.group(3))),
        Span("currency", at + len(v) - 3, at + len(v)),
    ]


def message(intent: str, r: random.Random) -> Example:
    tpl = r.choice(T[intent])
    text, spans = r.choice(_HEAD) if intent not in ("greeting", "goodbye") else "", []
    for part in re.split(r"(\{[a-z_0-9]+\})", tpl):
        if part.startswith("{"):
            v, slot = _val(part[1:-1], r)
            spans += _spans(slot, v, len(text))
            text += v
        else:
            text += _noise(part, r)
    return Example(
        text + (r.choice(_TAIL) if intent not in ("greeting", "goodbye") else ""), intent, spans
    )


def messages(per_intent: int, seed: int = 2027) -> list[Example]:
    r = random.Random(seed)
    out = [message(i, r) for i in T for _ in range(per_intent)]
    r.shuffle(out)
    return out


_GIVE = {"order_id": ("the reference is {v}", "it was order number {v}"),
         "quantity": ("I bought {v} of those", "there were {v} in the box"),
         "date": ("that was on {v}",), "amount": ("I paid {v} for it",)}  # fmt: skip
_CORRECT = ("change that to {v}", "my mistake, it is {v}", "hang on, it should be {v}")
_BACK = ("go with the one from earlier", "the original order, please")


def dialogue(r: random.Random) -> Dialogue:
    intent = r.choice(("order_status", "cancel_order", "return_item", "damaged_item"))
    state: dict[str, str] = {}
    orders: list[str] = []
    d = Dialogue()

    def turn(text: str, slot: str | None, v: str | None) -> None:
        spans = []
        if slot is not None:
            spans = _spans(slot, v, text.index(v))
            for sp in spans:
                state[sp.slot] = normalize(sp.slot, text[sp.start : sp.end])
            if slot == "order_id":
                orders.append(state[slot])
        d.turns.append(Turn(text, intent, spans, dict(state)))

    v, _ = _val("order_id", r)
    turn(f"Hello, I need help with order {v}.", "order_id", v)
    for _ in range(r.randint(2, 5)):
        move = r.choices(("give", "correct", "back"), (0.5, 0.3, 0.2))[0]
        if move == "back" and len(set(orders)) >= 2:
            text = r.choice(_BACK)  # "original": the first order; "from earlier": the last other
            cur = state["order_id"]
            state["order_id"] = (
                orders[0] if "original" in text else [o for o in orders if o != cur][-1]
            )
            d.turns.append(Turn(text, intent, [], dict(state)))
            continue
        slot = (
            r.choice(sorted(_GIVE))
            if move == "give"
            else r.choice(sorted(k for k in state if k in _GIVE))
        )
        v, _ = _val(slot, r)
        turn(r.choice(_GIVE[slot] if move == "give" else _CORRECT).format(v=v), slot, v)
    return d


def dialogues(n: int, seed: int = 2027) -> list[Dialogue]:
    r = random.Random(seed + 1)
    return [dialogue(r) for _ in range(n)]
