from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import get_project, refusals_as_errors
from proxy.retention import expired_cache_purge
from proxy.services import cache_purge


class Command(BaseCommand):
    help = (
        "Remove a project's answers from the response cache (only a model's or a path's with --model or --path), "
        "audited; or, with --expired, the expired answers of every project (the database backend; Redis expires "
        "its own)."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", nargs="?", help="project name or ID")
        parser.add_argument("--model", help="only the answers of this model")
        parser.add_argument("--path", help="only the answers of this API path (/chat/completions)")
        parser.add_argument("--expired", action="store_true", help="remove the expired answers of every project")

    def handle(self, *args, project: str | None, model: str | None, path: str | None, expired: bool, **options):
        if expired:
            if project or model or path:
                raise CommandError("--expired takes no project, --model or --path")
            self.stdout.write(f"removed {expired_cache_purge()} expired cached answers")
            return
        if not project:
            raise CommandError("give a project (name or ID), or --expired")
        target = get_project(project)
        with refusals_as_errors():
            removed = cache_purge(project=target, actor=Actor.cli(), model=model, path=path)
        self.stdout.write(f"removed {removed} cached answers of project {target.name!r}")
