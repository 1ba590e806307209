"""Serving the admin's static files from the app itself, so no web server is needed in front of it."""

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.views import static


class CollectedStaticFilesHandler(ASGIStaticFilesHandler):
    """Serves `collectstatic`'s output (STATIC_ROOT) when it exists, else straight from the apps' folders."""

    def serve(self, request):
        if not settings.STATIC_ROOT.is_dir():
            return super().serve(request)
        response = static.serve(request, self.file_path(request.path), document_root=settings.STATIC_ROOT)
        response["Cache-Control"] = "public, max-age=3600"
        return response
