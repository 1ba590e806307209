from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import add_policy_arguments, get_project, policy_given, refusals_as_errors
from projects.policy import POLICY_FIELDS
from projects.services import project_set_policy


class Command(BaseCommand):
    help = (
        "Set, change or remove (none) a project's policy: allowed models, model aliases, allowed endpoints, web "
        "origins and client addresses, each a comma-separated list. Lists not given stay as they are; each change "
        "bites on the next request."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")
        add_policy_arguments(parser)

    def handle(self, *args, project: str, **options):
        policy = policy_given(options)
        if not policy:
            raise CommandError("give at least one of the policy options (see --help)")
        with refusals_as_errors():
            target = project_set_policy(project=get_project(project), actor=Actor.cli(), **policy)
        for name in POLICY_FIELDS:
            value = getattr(target, name)
            if isinstance(value, dict):
                value = ", ".join(f"{alias}={model}" for alias, model in value.items())
            elif value:
                value = ", ".join(value)
            self.stdout.write(f"{name}: {value or 'any'}")
