"""
What the chat port shows: every hub event as the one line operators read.

One place for these sentences, so that the terminal, the audit log and
anything else that describes an event to a person say it alike:

    <bob> the valve is open                  chat
    * bob waves                              chat, an action (/me)
    * bob is offline (no answer to keepalive probes, detected after 3.1 s)
    * bob is offline (removed by alice)
    * carol was refused: server full (10 of 10 operators online)
    * alice set pump to on (was off)         control (boatwist.controls.words)
    * alice took the floor                   floor (boatwist.controls.words)

C{value} events (a reading changed outside an operation, e.g. a sensor
poll) are not shown: a sensor polled every second would flood a terminal,
and C{/controls} shows the current values on demand.  Everything shown is
passed through L{boatwist.textsafe.clean_message}: no control characters,
escape sequences or bidi overrides reach a terminal.
"""

from __future__ import annotations

from typing import Any, Mapping

from boatwist.controls.words import floor_line, operation_line
from boatwist.events import Event
from boatwist.reasons import WORDS
from boatwist.textsafe import clean_message

__all__ = [
    "REASON_WORDS",
    "format_chat",
    "format_event",
    "presence_sentence",
    "reason_words",
    "refusal_sentence",
]

#: Presence, close and refusal reasons in the words users read (L{boatwist.reasons}).
REASON_WORDS = WORDS


def reason_words(reason: object) -> str:
    """C{reason} as users read it; an unknown one is shown as it is, cleaned."""
    if isinstance(reason, str):
        return REASON_WORDS.get(reason) or clean_message(reason)
    return "unknown reason"


def presence_sentence(data: Mapping[str, Any]) -> str:
    """
    A presence event as one sentence, e.g. C{bob is offline (no answer to
    keepalive probes, detected after 3.1 s)}.  How long detection took is
    part of the sentence because it is what tells operators whether the
    "offline" they read is fresh.
    """
    if data.get("reason") == "refused":
        return refusal_sentence(data)
    user = clean_message(str(data.get("user", "?")))
    state = clean_message(str(data.get("state", "?")))
    words = reason_words(data.get("reason"))
    by = data.get("by")
    if data.get("reason") == "kicked" and isinstance(by, str) and by:
        words = f"removed by {clean_message(by)}"  # the same words as the floor's line, naming the admin
    if data.get("reason") == "login" and data.get("via"):
        words += f" via {clean_message(str(data['via']))}"
    after = data.get("detected_after")
    # A goodbye is not detected, it is heard: "left, detected after 0.0 s" is noise.
    if state == "offline" and isinstance(after, (int, float)) and data.get("reason") != "closed":
        words += f", detected after {after:.1f} s"
    return f"{user} is {state} ({words})"


def refusal_sentence(data: Mapping[str, Any]) -> str:
    """
    A refusal (a presence event with reason C{refused} and C{refusal},
    C{used}, C{limit}) as one sentence, e.g. C{carol was refused: server
    full (10 of 10 operators online)}.
    """
    user = clean_message(str(data.get("user", "?")))
    reason = data.get("refusal")
    used, limit = data.get("used", "?"), data.get("limit", "?")
    if reason == "full":
        detail = f"{used} of {limit} operators online"
    elif reason == "too-many-connections":
        detail = f"{used} of {limit} allowed per operator"
    elif reason:
        return f"{user} was refused: {reason_words(reason)}"
    else:
        return f"{user} was refused"
    return f"{user} was refused: {reason_words(reason)} ({detail})"


def format_chat(data: Mapping[str, Any]) -> str:
    """A chat event's data (or C{Message.as_event_data()}) as the line operators read."""
    user = clean_message(str(data.get("user", "?")))
    text = clean_message(str(data.get("text", "")))
    if data.get("action"):
        return f"* {user} {text}"
    return f"<{user}> {text}"


def format_event(event: Event) -> str | None:
    """The line for a hub event, or None for the kinds the chat port does not show (C{value})."""
    if event.kind == "chat":
        return format_chat(event.data)
    if event.kind == "presence":
        return "* " + presence_sentence(event.data)
    if event.kind == "control":
        return "* " + operation_line(event.data)
    if event.kind == "floor":
        try:
            return "* " + floor_line(event.data)
        except (KeyError, ValueError):
            return None  # not a floor event this version knows: better unsaid than garbled
    return None
