"""ASGI entry point (gunicorn with uvicorn workers). Also serves the collected static files, so the admin looks
right with DEBUG off and no web server in front; every request body is limited before anything reads it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.http import HttpResponse  # noqa: E402

from llmproxy.body_limit import limit_body  # noqa: E402
from llmproxy.manage_api.errors import ApiError  # noqa: E402
from llmproxy.static import CollectedStaticFilesHandler  # noqa: E402  (needs the settings loaded)
from proxy.asgi import with_proxy  # noqa: E402


async def body_too_large(scope: dict, send, limit: int) -> None:
    """The 413 for a path other than `/v1/`: the management API's error shape under `/manage/`, else plain text."""
    message = f"request body is larger than {limit} bytes"
    if scope["path"].startswith("/manage/"):
        response = ApiError(413, message, "body_too_large").response()
    else:
        response = HttpResponse(f"{message}\n", status=413, content_type="text/plain; charset=utf-8")
    response["Content-Length"] = str(len(response.content))
    await django_application.send_response(response, send)


application = with_proxy(
    limit_body(CollectedStaticFilesHandler(django_application), settings.MAX_REQUEST_BODY_BYTES, body_too_large)
)
