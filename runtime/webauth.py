"""Who may use a web page and its API (the device's page, the update service's fleet page): a bearer token
(header) or the session cookie set by the login form. Imported only by the web packages (fastapi is in the
device and train extras, not the base install).

Two roles: `user` (see, label, predict, metrics) and `operator` (also roll the head back). With no token
configured (allowed only on a loopback bind) every request is an operator: anyone who can reach 127.0.0.1 on
this machine can use it. The cookie holds an HMAC derived from the token, not the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal, Optional

from fastapi import HTTPException, Request

COOKIE = "infantino_session"
Role = Literal["user", "operator"]


class Auth:
    """Checks requests against the configured tokens (either may be None)."""

    def __init__(self, token: Optional[str], operator_token: Optional[str], cookie: str = COOKIE):
        """`cookie`: the session cookie's name (one per page served from the same host, as cookies ignore ports)."""
        self.token = token
        self.operator_token = operator_token
        self.cookie = cookie

    @property
    def open(self) -> bool:
        """No token configured: everything is allowed (loopback only; the config refuses it elsewhere)."""
        return self.token is None and self.operator_token is None

    @staticmethod
    def session_value(token: str) -> str:
        return hmac.new(token.encode(), b"infantino-web-session-v1", hashlib.sha256).hexdigest()

    def role_of_token(self, token: str) -> Optional[Role]:
        if self.operator_token is not None and hmac.compare_digest(token.encode(), self.operator_token.encode()):
            return "operator"
        if self.token is not None and hmac.compare_digest(token.encode(), self.token.encode()):
            return "user"
        return None

    def role_of_cookie(self, value: str) -> Optional[Role]:
        if self.operator_token is not None and hmac.compare_digest(value, self.session_value(self.operator_token)):
            return "operator"
        if self.token is not None and hmac.compare_digest(value, self.session_value(self.token)):
            return "user"
        return None

    def role(self, request: Request) -> tuple[Optional[Role], str]:
        """(role, why not) for a request: the bearer header wins over the cookie."""
        if self.open:
            return "operator", ""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None, "the Authorization header must be 'Bearer <token>'"
            role = self.role_of_token(value.strip())
            return (role, "") if role else (None, "wrong token")
        cookie = request.cookies.get(self.cookie)
        if cookie is not None:
            role = self.role_of_cookie(cookie)
            return (role, "") if role else (None, "the session is no longer valid: log in again")
        return None, "a token is required (Authorization: Bearer <token>, or log in on the page)"

    # ---- FastAPI dependencies -------------------------------------------------------------------------
    def user(self, request: Request) -> Role:
        """Any valid token (or none configured); 401 otherwise."""
        role, why = self.role(request)
        if role is None:
            raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})
        return role

    def operator(self, request: Request) -> Role:
        """The operator token (or none configured); 401 without a valid token, 403 with the user token."""
        role = self.user(request)
        if role != "operator":
            raise HTTPException(403, "this needs the operator token" + ("" if self.operator_token else
                                                                        " (none is configured on this device)"))
        return role
