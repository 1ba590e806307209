from django.core.management.base import BaseCommand

from llmproxy.audit import Actor
from projects.management.cli import (
    add_policy_arguments,
    add_upstream_arguments,
    policy_given,
    read_key,
    refusals_as_errors,
)
from projects.services import project_create


class Command(BaseCommand):
    help = (
        "Create a project for an upstream API key (OpenAI by default; --upstream-url for Azure OpenAI, Anthropic or "
        "an OpenAI-compatible server). Pass the key with --api-key, or with --api-key-stdin to keep it out of the "
        "shell history (e.g. `pass show openai | manage.py create_project --name demo --api-key-stdin`). Prints the "
        "new project's ID."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="unique project name (case-insensitive)")
        key = parser.add_mutually_exclusive_group(required=True)
        key.add_argument("--api-key", help="the upstream API key (visible in the shell history and process list)")
        key.add_argument("--api-key-stdin", action="store_true", help="read the upstream API key from stdin")
        add_upstream_arguments(parser)
        add_policy_arguments(parser)

    def handle(self, *args, name: str, api_key: str | None, api_key_stdin: bool, **options):
        api_key = read_key(api_key, api_key_stdin)
        with refusals_as_errors():
            project = project_create(
                name=name,
                api_key=api_key,
                actor=Actor.cli(),
                upstream_url=options["upstream_url"] or "",
                upstream_auth=options["upstream_auth"],
                **policy_given(options),
            )
        self.stderr.write(
            f"Created project {project.name!r} (key {project.api_key_masked}, upstream {project.base_url})."
        )
        self.stdout.write(str(project.pk))
