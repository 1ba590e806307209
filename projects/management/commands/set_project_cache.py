from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import get_project, refusals_as_errors
from projects.models import CacheMode
from projects.services import project_set_cache


class Command(BaseCommand):
    help = (
        "Set a project's response cache: off, opt-in (the client sends Cache-Control: max-age=N) or on (also "
        "embeddings and requests with temperature 0 or a seed, kept --ttl seconds). Bites on the next request."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")
        parser.add_argument("--mode", choices=CacheMode.values, help="off, opt-in or on")
        parser.add_argument("--ttl", type=int, help="seconds an answer cached without the client's max-age is kept")

    def handle(self, *args, project: str, mode: str | None, ttl: int | None, **options):
        if mode is None and ttl is None:
            raise CommandError("give --mode, --ttl or both")
        with refusals_as_errors():
            target = project_set_cache(
                project=get_project(project), actor=Actor.cli(), cache_mode=mode, cache_ttl_seconds=ttl
            )
        self.stdout.write(
            f"Project {target.name!r}: response cache {target.cache_mode}, lifetime {target.cache_ttl_seconds} s."
        )
