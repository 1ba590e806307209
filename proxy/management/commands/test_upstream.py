from django.core.management.base import BaseCommand, CommandError

from projects.management.cli import get_project
from proxy.probe import project_upstream_test


class Command(BaseCommand):
    help = (
        "Ask a project's upstream for its model list with the project's key: whether its URL, auth style and key "
        "work together. Exit status 1 with the upstream's error (never the key) when not."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")

    def handle(self, *args, project: str, **options):
        target = get_project(project)
        result = project_upstream_test(project=target)
        if not result.ok:
            raise CommandError(f"{target.base_url}: {result.message}")
        models = "" if result.model_count is None else f", {result.model_count} models listed"
        self.stdout.write(f"{target.base_url}: OK (HTTP {result.status}{models})")
