"""The feedback API's one rule on the wire that the gateway and the capture sink both apply
before reading a body (no database here, so the gateway imports it cheaply): JSON only.

A cross-site page can send a "simple" request (``text/plain``, a form, ``multipart/form-data``)
without asking the API first; ``application/json`` needs a CORS preflight, which nothing on the
platform grants. So refusing everything but JSON (415) keeps other sites' pages out of the
feedback, and so out of the training data.
"""

from __future__ import annotations

from gourmetgram.constants import FEEDBACK_CONTENT_TYPE


def media_type_problem(content_type: str | None) -> str | None:
    """None when ``content_type`` is ``application/json`` (parameters such as charset allowed),
    else the sentence a 415 answers with."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == FEEDBACK_CONTENT_TYPE:
        return None
    got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return (f"feedback must be sent as JSON with Content-Type: {FEEDBACK_CONTENT_TYPE} (got {got}); forms and "
            "text/plain are refused")
