"""The error a service raises when it refuses: a stable code for programs, a message for people, and the input
field it concerns (if any). Each interface translates codes once: the admin's forms (`llmproxy.admin_toolkit`), the
management API (`llmproxy.manage_api.errors`) and the commands (`projects.management.cli`).

It is a Django `ValidationError` (keyed by the field when there is one), so forms take it as it is.
"""

from django.core.exceptions import ValidationError


class ServiceError(ValidationError):
    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        error = ValidationError(message, code=code)
        super().__init__({field: [error]} if field else error)
        self.code = code
        self.field = field

    @property
    def text(self) -> str:
        return self.messages[0]
