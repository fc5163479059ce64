"""gcsfs filesystems for ``gs://`` with one try per request (imported only when gcsfs is installed).

gcsfs retries every request itself, up to 6 tries with backoff of up to 32 s, whatever its
``retries`` attribute says (the count is fixed when the class is defined): with datakit's own retry
loop around it, an unreachable endpoint would take many minutes to become an error. These
subclasses send each request once; :func:`datakit.remote.retry` is the one retry loop.

:func:`filesystem_class` picks the plain JSON-API filesystem for an emulator
(``STORAGE_EMULATOR_HOST`` or an ``endpoint_url``): gcsfs's default class first asks a gRPC
storage-control API for the bucket's layout, which an emulator does not have, and with any
credentials configured retries that for 60 s before every operation.
"""

from __future__ import annotations

from typing import Any

import gcsfs
from gcsfs.core import GCSFileSystem as _JsonGCSFileSystem


def _once(cls: type) -> Any:
    fn = cls._request  # type: ignore[attr-defined]
    return getattr(fn, "__wrapped__", fn)  # the request without gcsfs's retry_request decorator


class OneTryGCSFileSystem(_JsonGCSFileSystem):  # type: ignore[misc]
    """gcsfs's JSON-API filesystem, each HTTP request sent once."""

    _request = _once(_JsonGCSFileSystem)


class OneTryDefaultGCSFileSystem(gcsfs.GCSFileSystem):  # type: ignore[misc,name-defined]
    """gcsfs's default filesystem (with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``, its default: zonal
    and hierarchical buckets too), each HTTP request sent once."""

    _request = _once(_JsonGCSFileSystem)


def filesystem_class(emulator: bool) -> type:
    """The one-try filesystem class: the plain JSON-API one for an ``emulator``."""
    return OneTryGCSFileSystem if emulator else OneTryDefaultGCSFileSystem
