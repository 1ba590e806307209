"""Serving the admin's static files from the app itself, so no web server is needed in front of it."""

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404
from django.views import static


class CollectedStaticFilesHandler(ASGIStaticFilesHandler):
    """Serves `collectstatic`'s output (STATIC_ROOT) when it exists, else straight from the apps' folders."""

    def serve(self, request):
        """A path that climbs out of the static files (`/static/../../etc/passwd`, `%2e%2e`, …) names no static
        file: 404, where Django's lookup raises and the server would answer 500."""
        try:
            return self._serve(request)
        except SuspiciousFileOperation:
            raise Http404("No such static file.") from None

    def _serve(self, request):
        if not settings.STATIC_ROOT.is_dir():
            return super().serve(request)
        response = static.serve(request, self.file_path(request.path), document_root=settings.STATIC_ROOT)
        response["Cache-Control"] = "public, max-age=3600"
        return response
