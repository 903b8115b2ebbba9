"""The embedded ``AuthorizationServer`` with its metadata document edited, and its
metadata requests counted: for discovery's checks and the doctor's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keyless_m2m.testing.authorization_server import AuthorizationServer


class CustomMetadataServer(AuthorizationServer):
    """The embedded server with its metadata edited, and its metadata requests counted."""

    def __init__(self, edit: Callable[[dict[str, Any]], None] = lambda m: None, **options: Any) -> None:
        super().__init__(**options)
        self.edit = edit
        self.metadata_requests = 0

    def metadata(self) -> dict[str, Any]:
        self.metadata_requests += 1
        document = super().metadata()
        self.edit(document)
        return document
