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


# Schemes whose ``user@`` is a credential; elsewhere it may be a name (``abfs://container@account...``),
# taken for a credential only with a ``:password``.
_CREDENTIAL_SCHEMES = ("s3", "s3a", "gs", "gcs", "http", "https")
_BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs")  # no ":" in a bucket name: never a host:port
# A password holding "/", "?" or "#" (about half of all AWS secret keys hold a "/") ends urlsplit's
# host early, and the secret would stay in the URL as host and path: what precedes the next "@" is
# userinfo when it reads user:password, not host:port.
_LOOSE_USERINFO = re.compile(r"([^/?#@:]+:[^@]*)@")
_HOST_PORT = re.compile(r"[^:]*:\d*(?:[/?#]|$)")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(``scheme://``, userinfo, the rest after its ``@``) of a URL holding credentials, else None."""
    m = _URL.match(url)
    if m is None:
        return None
    head, rest = url[: m.end()], url[m.end() :]
    scheme = head[:-3].lower()
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
    else:
        loose = _LOOSE_USERINFO.match(rest)
        if loose is None or (scheme not in _BUCKET_SCHEMES and _HOST_PORT.match(loose.group(1))):
            return None
        userinfo = loose.group(1)
    if scheme not in _CREDENTIAL_SCHEMES and ":" not in userinfo:
        return None
    return head, userinfo, rest[len(userinfo) + 1 :]


def redact(url: str) -> str:
    """Mask credentials in a URL: ``s3://key:secret@bucket/x`` -> ``s3://***@bucket/x``, and the values
    of signature/token/key query parameters (pre-signed URLs, SAS tokens)."""
    if not _URL.match(url):
        return url
    found = _userinfo(url)
    if found is not None:
        url = f"{found[0]}***@{found[2]}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (no userinfo; the scheme's default port made explicit):
    what credentials are kept per, and what a redirect must not leave to keep them."""
    p = urlsplit(url)
    port = p.port or _DEFAULT_PORTS.get(p.scheme)
    return f"{p.scheme}://{p.hostname or ''}" + (f":{port}" if port else "")


def register_url_credentials(url: str) -> str:
    """Take ``user:password@`` out of ``url``, remember it for that origin, return the clean URL."""
    found = _userinfo(url) if is_url(url) else None
    if found is None:
        return url
    head, userinfo, rest = found
    user, _, password = userinfo.partition(":")
    clean = head + rest
    _CREDENTIALS[origin(clean)] = (unquote(user), unquote(password))
    return clean


def url_credentials(url: str) -> tuple[str, str] | None:
    return _CREDENTIALS.get(origin(url)) if is_url(url) else None


def credentials_snapshot() -> dict[str, tuple[str, str]]:
    return dict(_CREDENTIALS)


def install_credentials(snapshot: Mapping[str, tuple[str, str]]) -> None:
    _CREDENTIALS.update(snapshot)
