from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import add_upstream_arguments, get_project, read_key, refusals_as_errors
from projects.services import project_update


class Command(BaseCommand):
    help = (
        "Move a project to another upstream and/or give it a new key (--api-key-stdin keeps the key out of the shell "
        "history). What is not given stays; a kept key must fit the new upstream's key rule. Bites on the next "
        "request."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")
        add_upstream_arguments(parser)
        key = parser.add_mutually_exclusive_group()
        key.add_argument("--api-key", help="a new upstream API key (visible in the shell history and process list)")
        key.add_argument("--api-key-stdin", action="store_true", help="read a new upstream API key from stdin")

    def handle(self, *args, project: str, upstream_url, upstream_auth, api_key, api_key_stdin: bool, **options):
        api_key = read_key(api_key, api_key_stdin)
        if upstream_url is None and upstream_auth is None and not api_key:
            raise CommandError("give at least one of --upstream-url, --upstream-auth, --api-key, --api-key-stdin")
        with refusals_as_errors():
            target = project_update(
                project=get_project(project),
                actor=Actor.cli(),
                upstream_url=upstream_url,
                upstream_auth=upstream_auth,
                api_key=api_key,
            )
        self.stdout.write(
            f"Project {target.name!r}: upstream {target.base_url}, key sent as {target.upstream_auth} "
            f"({target.api_key_masked})."
        )
