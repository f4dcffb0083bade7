"""The live view's routes on the ``--prom-addr`` listener (``docs/live-view.md``).

``GET /agents`` (JSON, :mod:`varta.watch.agents`; bearer token as for
``/metrics``) and ``GET /``: one self-contained HTML page
(:mod:`varta.watch.status_page`; inline CSS and script, no external request)
served without the token — it holds no data and a browser cannot send a
token when it navigates; it asks for the token and sends it with each fetch of
``/agents``. Its ``Content-Security-Policy`` allows exactly its own inline
script and style (by hash) and fetches to the same origin.
"""

from __future__ import annotations

import binascii
import re

from .audit_format import _sha256 as sha256
from .metrics_server import Route
from .status_page import PAGE

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Callable


def _hash(kind: str) -> str:
    m = re.search(rf"<{kind}>(.*?)</{kind}>", PAGE, re.S)
    assert m is not None, kind
    digest = sha256(m.group(1).encode()).digest()  # not hashlib: it loads OpenSSL (~4 MB)
    return "'sha256-" + binascii.b2a_base64(digest, newline=False).decode() + "'"


#: docs/live-view.md#status-page
CSP = (
    f"default-src 'none'; script-src {_hash('script')}; style-src {_hash('style')}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_COMMON = b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
PAGE_HEADERS = (
    _COMMON
    + b"Content-Security-Policy: "
    + CSP.encode()
    + b"\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"
)
PAGE_BYTES = PAGE.encode()


def live_routes(agents_body: Callable[[str], bytes]) -> dict[bytes, Route]:
    """``/agents``, ``/`` and an empty ``/favicon.ico`` (so a browser's icon
    request is neither a metrics render nor an auth failure)."""
    return {
        b"/agents": Route(b"application/json", agents_body, headers=_COMMON),
        b"/": Route(
            b"text/html; charset=utf-8", lambda _q: PAGE_BYTES, public=True, headers=PAGE_HEADERS
        ),
        b"/favicon.ico": Route(b"image/x-icon", lambda _q: b"", public=True, headers=_COMMON),
    }
