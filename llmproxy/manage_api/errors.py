"""The API's one error shape: `{"error": "<message>", "code": "<code>", "field"?: "<name>"}`, always JSON.

`error` keeps the original tool's key, so its clients keep reading the message; `code` is for programs.
"""

from django.http import JsonResponse


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
