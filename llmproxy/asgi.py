"""ASGI entry point (gunicorn with uvicorn workers). Also serves the collected static files, so the admin looks
right with DEBUG off and no web server in front."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")

django_application = get_asgi_application()

from llmproxy.static import CollectedStaticFilesHandler  # noqa: E402  (needs the settings loaded)
from proxy.asgi import with_proxy  # noqa: E402

application = CollectedStaticFilesHandler(with_proxy(django_application))
