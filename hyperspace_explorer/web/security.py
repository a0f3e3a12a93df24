"""What keeps `hse ui` to its user: the access token, cross-site request checks and
the response headers, as one ASGI middleware in front of every route.

- **Access token.** Bound to a loopback address the page is only reachable from this
  machine and needs none; bound elsewhere, every request must carry the token that
  `hse ui` prints: once as `?token=` (answered with a cookie and a redirect to the same
  address without it), or as the `X-HSE-Token` header. Anything else gets 401.
- **Host check.** On loopback the `Host` header must name a loopback address: a web
  site cannot reach the page through a DNS name rebound to 127.0.0.1.
- **Cross-site requests.** Actions are POST only, and a POST must come from the page
  itself: its `Origin` (else `Referer`) is this server, and its form carries the CSRF
  token of the `hse_csrf` cookie (double submit; the cookie is SameSite=Strict).
- **Headers.** A Content-Security-Policy without inline scripts (data reaches scripts
  only as JSON in non-executed `<script type="application/json">` blocks), no framing,
  no MIME sniffing, no referrer to other sites, nothing cached.
"""
from __future__ import annotations

import ipaddress
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_PARAM = "token"
TOKEN_COOKIE = "hse_token"
TOKEN_HEADER = "x-hse-token"
CSRF_COOKIE = "hse_csrf"
CSRF_FIELD = "csrf"
SAFE_METHODS = ("GET", "HEAD")
#: Scripts only from the page's own files (no inline script, no eval); Plotly sets
#: inline styles, which style-src allows.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: The same for the one page with parallel coordinates: Plotly draws them with WebGL
#: shaders that its regl library compiles with `new Function` ('unsafe-eval'); inline
#: scripts stay forbidden there too.
CSP_WITH_EVAL = CSP.replace("script-src 'self';", "script-src 'self' 'unsafe-eval';")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
           "Cross-Origin-Opener-Policy": "same-origin"}


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to bind, or a Host header's name) is this
    machine only: 127.0.0.0/8, ::1 or localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh access or CSRF token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


class Guard(BaseHTTPMiddleware):
    """The checks of the module docstring. `token=None`: no access token (loopback)."""

    def __init__(self, app: Any, *, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return self._headers(refused)
        given = request.query_params.get(TOKEN_PARAM)
        if self.token is not None and given is not None and request.method in SAFE_METHODS:
            # The token in the address once: into an HttpOnly cookie, out of the URL
            # (and so out of the history, logs and Referer headers).
            params = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
            target = request.url.path + (f"?{urlencode(params)}" if params else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return self._headers(response)
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        fresh = not csrf
        if fresh:
            csrf = new_token()
        request.state.csrf = csrf
        if request.method not in SAFE_METHODS:
            problem = self._cross_site(request)
            if problem is not None:
                return self._headers(PlainTextResponse(problem, status_code=403))
        response = await call_next(request)
        if fresh:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return self._headers(response)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None:
            host = request.headers.get("host", "")
            name = urlsplit(f"//{host}").hostname or ""
            if not is_loopback(name):
                return PlainTextResponse(
                    f"refused: this page is served on a loopback address and answers only "
                    f"to its own name (Host {host!r}); open it as http://127.0.0.1",
                    status_code=403)
            return None
        given = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
                 or request.query_params.get(TOKEN_PARAM) or "")
        if secrets.compare_digest(given.encode(), self.token.encode()):
            return None
        return PlainTextResponse(
            "access token required: open the address `hse ui` printed (it ends in "
            "?token=...), or send the token in the X-HSE-Token header", status_code=401)

    @staticmethod
    def _cross_site(request: Request) -> str | None:
        """Why a state-changing request is refused as cross-site (None: it is not)."""
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            origin = None if referer is None else f"{URL(referer).scheme}://{URL(referer).netloc}"
        if origin != own:
            return f"refused: a cross-site request (origin {origin!r} is not {own!r})"
        return None

    @staticmethod
    def _headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response


async def checked_form(request: Request) -> Any:
    """The posted form of an action, once its CSRF field matches the `hse_csrf` cookie
    (double submit: another site can make a browser send the cookie, not read it);
    PermissionError otherwise. Every action handler reads its form through this."""
    form = await request.form()
    field, cookie = form.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE)
    if not isinstance(field, str) or not cookie or not secrets.compare_digest(
            field.encode(), cookie.encode()):
        raise PermissionError("refused: the form's CSRF token is missing or stale; "
                              "reload the page and try again")
    return form
