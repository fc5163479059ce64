"""URLs as datakit handles them: which strings are URLs, masking secrets in them, and credentials
written into a URL (``s3://KEY:SECRET@bucket/x``, ``https://user:pw@host/x``), which are taken out
on entry (:func:`register_url_credentials`) so that the URLs travelling through the code, logs,
errors and ``_info.json`` never hold them; :func:`redact` masks anything that slips through.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from datakit.errors import UsageError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAM = re.compile(r"sig|signature|token|secret|password|passwd|credential|key", re.I)


def is_url(path: str | os.PathLike[str]) -> bool:
    return bool(_URL.match(str(path))) and not str(path).startswith("file://")


READ_ONLY_SCHEMES = ("http", "https")


def check_writable(
    target: str | os.PathLike[str], option: str, *, local_only: bool = False
) -> None:
    """Refuse, before any work, an output that cannot be written: ``http(s)://`` is read only
    (SPEC 1), and a ``local_only`` output (run folder, EVAL.json, preview files, exported backbone)
    takes a local path, not a URL. ``option`` names it in the message (``OUT``, ``--out``).

    Raises :class:`~datakit.errors.UsageError`."""
    text = str(target)
    if not _URL.match(text):
        return
    scheme = text.split(":", 1)[0].lower()
    if local_only:
        raise UsageError(f"{option} {redact(text)}: must be a local path, not a URL")
    if scheme in READ_ONLY_SCHEMES:
        raise UsageError(
            f"{option} {redact(text)}: {scheme}:// is read only; write to a local folder or a "
            "bucket (s3://, gs://, az://)"
        )


def redact(url: str) -> str:
    """Mask credentials in a URL: ``s3://key:secret@bucket/x`` -> ``s3://***@bucket/x``, and the values
    of signature/token/key query parameters (pre-signed URLs, SAS tokens)."""
    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """:func:`redact` every URL inside free text (exception messages from lower layers)."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_args(value: Any) -> Any:
    """:func:`redact_text` every string inside nested dicts/lists (arguments bound for a manifest)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_args(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_args(v) for v in value)
    return value


# Credentials taken out of URLs, by "scheme://host" (the bucket for s3/gs). Snapshot and install
# them in another process with credentials_snapshot() / install_credentials().
_CREDENTIALS: dict[str, tuple[str, str]] = {}


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rsplit('@', 1)[-1]}"


def register_url_credentials(url: str) -> str:
    """Take ``user:password@`` out of ``url``, remember it for that origin, return the clean URL."""
    if not is_url(url):
        return url
    p = urlsplit(url)
    if "@" not in p.netloc:
        return url
    userinfo, host = p.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((p.scheme, host, p.path, p.query, p.fragment))
    _CREDENTIALS[_origin(clean)] = (unquote(user), unquote(password))
    return clean


def url_credentials(url: str) -> tuple[str, str] | None:
    return _CREDENTIALS.get(_origin(url)) if is_url(url) else None


def credentials_snapshot() -> dict[str, tuple[str, str]]:
    return dict(_CREDENTIALS)


def install_credentials(snapshot: Mapping[str, tuple[str, str]]) -> None:
    _CREDENTIALS.update(snapshot)
