"""The API's one error shape: `{"error": "<message>", "code": "<code>", "field"?: "<name>"}`, always JSON.

`error` keeps the original tool's key, so its clients keep reading the message; `code` is for programs.
"""

from django.http import JsonResponse

from llmproxy.errors import ServiceError


class ApiError(Exception):
    """Raised anywhere below a view; the view turns it into the JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        body = {"error": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        response = JsonResponse(body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(field: str, message: str, code: str = "invalid") -> ApiError:
    """A 400 naming the field and the rule it breaks."""
    return ApiError(400, message, code, field=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found", "not_found")


# A service's refusal as an answer: its code gives the status (400 unless listed here), and the field it names is
# the request field as the API calls it; a refusal that names none points at the request field that asked for it.
SERVICE_STATUS = {"duplicate_name": 409, "project_inactive": 403, "token_expired": 409, "cache_unavailable": 503}
SERVICE_FIELDS = {"project": "project_id"}
FIELD_OF_CODE = {"token_expired": "is_active"}


def from_service_error(error: ServiceError, fields: dict[str, str] | None = None) -> ApiError:
    """`fields` adds request field names for this call (the service's `duration` is whichever of duration_hours
    and duration_minutes the request gave)."""
    if error.field:
        field = {**SERVICE_FIELDS, **(fields or {})}.get(error.field, error.field)
    else:
        field = FIELD_OF_CODE.get(error.code)
    return ApiError(SERVICE_STATUS.get(error.code, 400), error.text, error.code, field=field)
