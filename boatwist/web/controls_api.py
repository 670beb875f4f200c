"""
The device over HTTP: controls, operations, the floor, kicking, and the words.

    GET    /api/controls            {"controls": [...], "floor": {...}, "role": ROLE}
    GET    /api/controls/NAME       one control
    POST   /api/controls/NAME       {"value": V} (an action: {} or no body), or
                                    {"value": V, "confirm": TOKEN}
                                    200 {"operation": {...}}      400 bad value
                                    403 role    404 unknown       405 a sensor
                                    409 floor held (names the holder)
                                    428 {"confirm", "question", "expires_in"}
                                    429 rate (Retry-After)  502 backend failed
                                    504 backend timed out
    GET    /api/operations          {"operations": [...]} newest last
                                    (?before=ID, ?limit=N (1..500), ?control=NAME)
    GET    /api/floor               {"mode", "state", "holder", "since", "requested_by", ...}
    POST   /api/floor               take it when free, request it when held
                                    ({"message": TEXT}); the holder answers a request
                                    with {"action": "hand-over"} or {"action": "refuse"};
                                    a requester withdraws with {"action": "withdraw"}
    DELETE /api/floor               release (the holder) or break (an admin)
    POST   /api/kick                {"user": NAME} (admin): their connections close
                                    with reason kicked; 404 when not online
    GET    /api/reasons             every reason code and the words people read:
                                    {"reasons": presence, "floor": floor reasons,
                                     "kinds": connection kinds}

Every error is JSON: C{{"error": "what was wrong and what is allowed", ...}}.
An operation from a browser (a request with C{Sec-Fetch-Mode}) is C{via}
C{web}; from anything else (curl, a script) C{api}.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Callable, Mapping

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from boatwist.controls.floor import FLOOR_WORDS, FloorRefusal, RefusalCode
from boatwist.controls.pipeline import Outcome
from boatwist.core import Core
from boatwist.reasons import WORDS, Reason
from boatwist.web.chat_api import int_arg
from boatwist.web.console_api import KIND_WORDS
from boatwist.web.errors import ErrorResource
from boatwist.web.jsonapi import JSON, BadBody, UserResource, answer_later, json_body, read_json

__all__ = ["ControlsResource", "FloorResource", "KickResource", "OperationsResource", "ReasonsResource"]

#: A floor refusal's HTTP status.
_FLOOR_STATUS = {RefusalCode.ROLE: 403}


def _via(request: Request) -> str:
    """C{web} for a browser's fetch (it always sends Sec-Fetch-Mode), C{api} for curl and scripts."""
    return "web" if request.getHeader(b"sec-fetch-mode") else "api"


def _outcome_body(outcome: Outcome) -> JSON:
    if outcome.ok:
        return {"operation": dict(outcome.operation or {})}
    body: dict[str, JSON] = {"error": outcome.error}
    body.update(outcome.detail)
    if outcome.operation is not None:
        body["operation"] = dict(outcome.operation)
    return body


class ControlsResource(UserResource):
    """C{/api/controls} and C{/api/controls/NAME}."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        if not path:
            return self
        if request.postpath:
            return ErrorResource(404, "no such API")
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return ErrorResource(404, "no such control")
        return ControlResource(self.user, self.core, name)

    def render_GET(self, request: Request) -> bytes | int:
        return _once_built(request, self.core, self._listing)

    def _listing(self, request: Request) -> bytes:
        """The listing, each control's JSON as the registry keeps it encoded (they change rarely)."""
        core = self.core
        controls = core.controls.listing_json(self.user, core.roles)
        floor = core.floor.snapshot()
        rest = _floor_and_role(tuple(floor.items()), core.roles.role_of(self.user).label)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return b"".join((b'{"controls": [', controls, b"], ", rest))


class ControlResource(UserResource):
    isLeaf = True

    def __init__(self, user: str, core: Core, name: str) -> None:
        super().__init__(user, core)
        self.name = name

    def render_GET(self, request: Request) -> bytes | int:
        return _once_built(request, self.core, self._one)

    def _one(self, request: Request) -> bytes:
        state = self.core.controls.get(self.name)
        if state is None:
            known = ", ".join(self.core.controls.names) or "none"
            return json_body(request, {"error": f"no control named {self.name!r} (controls: {known})"}, 404)
        return json_body(request, self.core.controls.describe(state, self.user, self.core.roles))

    def render_POST(self, request: Request) -> bytes | int:
        try:
            body = read_json(request, empty_ok=True)
        except BadBody as e:
            return json_body(request, {"error": str(e)}, e.code)
        confirm = body.get("confirm")
        if confirm is not None and not isinstance(confirm, str):
            return json_body(request, {"error": "confirm must be the token a 428 answer gave"}, 400)
        d = self.core.operations.operate(self.user, self.name, body.get("value"), _via(request), confirm)

        def answer(outcome: Outcome) -> None:
            if outcome.status == 429:
                retry = outcome.detail.get("retry_after")
                if isinstance(retry, (int, float)):
                    request.setHeader(b"retry-after", str(max(1, math.ceil(retry))).encode())
            request.write(json_body(request, _outcome_body(outcome), outcome.status))
            request.finish()

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d.addCallback(lambda outcome: None if gone else answer(outcome))
        return NOT_DONE_YET


@lru_cache(maxsize=32)
def _floor_and_role(floor: tuple[tuple[str, object], ...], role: str) -> bytes:
    """
    The listing's last members, C{"floor": ..., "role": ...}, encoded: the
    same few snapshots (a free floor, above all) come back request after
    request, and encoding them was a few microseconds of each.  A pure
    function of its arguments, so the memo never needs clearing.
    """
    return json.dumps({"floor": dict(floor), "role": role}, ensure_ascii=False).encode("utf-8")[1:] + b"\n"


def _once_built(request: Request, core: Core, answer: Callable[[Request], bytes]) -> bytes | int:
    """
    Answer with C{answer(request)} (which sets the status and returns the
    body) -- at once, or, in the moment after start when the controls do
    not have their states yet, once they do.
    """
    if core.controls.built:
        return answer(request)
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(_: None) -> None:
        if not gone:
            request.write(answer(request))
            request.finish()

    core.controls.when_built().addCallback(write)
    return NOT_DONE_YET


class OperationsResource(Resource):
    """C{GET /api/operations}: the recorded operations, newest last."""

    isLeaf = True

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core

    def render_GET(self, request: Request) -> bytes | int:
        try:
            before = int_arg(request, b"before")
            limit = int_arg(request, b"limit")
        except ValueError as e:
            return json_body(request, {"error": str(e)}, 400)
        control = None
        if request.args and request.args.get(b"control"):
            control = request.args[b"control"][0].decode("utf-8", "replace")
        d = self.core.store.operations(before=before, limit=50 if limit is None else limit, control=control)
        d.addCallback(lambda records: {"operations": [r.as_dict() for r in records]})
        return answer_later(request, d, 200, lambda failure: (500, {"error": "the operations cannot be read"}))


class FloorResource(UserResource):
    """C{/api/floor}: who holds it; take, request, answer, release, break."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, dict(self.core.floor.snapshot()))

    def render_POST(self, request: Request) -> bytes:
        try:
            body = read_json(request, empty_ok=True)
        except BadBody as e:
            return json_body(request, {"error": str(e)}, e.code)
        message = body.get("message", "")
        action = body.get("action", "claim")
        if not isinstance(message, str) or not isinstance(action, str):
            return json_body(request, {"error": 'expected {"message": TEXT} or {"action": ACTION}'}, 400)
        floor = self.core.floor
        actions = {
            "claim": lambda: floor.claim(self.user, message),
            "take": lambda: floor.take(self.user),
            "request": lambda: floor.request(self.user, message),
            "hand-over": lambda: floor.hand_over(self.user),
            "refuse": lambda: floor.refuse(self.user),
            "withdraw": lambda: floor.withdraw(self.user),
            "release": lambda: floor.release(self.user),
        }
        act = actions.get(action)
        if act is None:
            return json_body(request, {"error": f"unknown action {action!r}: expected one of {', '.join(actions)}"},
                             400)
        return self._answer(request, act())

    def render_DELETE(self, request: Request) -> bytes:
        floor = self.core.floor
        if floor.holder is not None and floor.holder != self.user and self.core.roles.may_admin(self.user):
            return self._answer(request, floor.break_(self.user))
        return self._answer(request, floor.release(self.user))

    def _answer(self, request: Request, refusal: FloorRefusal | None) -> bytes:
        if refusal is None:
            return json_body(request, dict(self.core.floor.snapshot()))
        body: dict[str, JSON] = {"error": refusal.message, "code": refusal.code.value, "holder": refusal.holder,
                                 "requested_by": refusal.requested_by}
        return json_body(request, body, _FLOOR_STATUS.get(refusal.code, 409))


class KickResource(UserResource):
    """C{POST /api/kick}: an admin removes a user."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        try:
            body = read_json(request)
        except BadBody as e:
            return json_body(request, {"error": str(e)}, e.code)
        target = body.get("user")
        if not isinstance(target, str) or not target:
            return json_body(request, {"error": 'expected {"user": NAME}'}, 400)
        if not self.core.roles.may_admin(self.user):
            return json_body(request, {"error": f"{self.user} is not an admin: only admins kick"}, 403)
        if not self.core.presence.kick(target, Reason.KICKED, by=self.user):
            return json_body(request, {"error": f"{target} is not online"}, 404)
        self.core.store.audit("kick", self.user, None, f"kicked {target}").addErrback(lambda _: None)
        return json_body(request, {"kicked": target, "by": self.user})


class ReasonsResource(Resource):
    """C{GET /api/reasons}: the words for every reason and connection kind: the browser says what the chat port says."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        words: Mapping[str, str] = WORDS
        return json_body(request, {"reasons": dict(words), "floor": dict(FLOOR_WORDS), "kinds": dict(KIND_WORDS)})
