from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import get_project, refusals_as_errors
from tokens.services import project_set_active


class Command(BaseCommand):
    help = (
        "Activate or deactivate a project. An inactive project's tokens are refused by the proxy but not revoked; "
        "add --revoke-tokens (with --inactive) to revoke them for good."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")
        state = parser.add_mutually_exclusive_group(required=True)
        state.add_argument("--active", dest="active", action="store_true", default=None)
        state.add_argument("--inactive", dest="active", action="store_false")
        parser.add_argument("--revoke-tokens", action="store_true", help="with --inactive: also revoke every token")

    def handle(self, *args, project: str, active: bool, revoke_tokens: bool, **options):
        if revoke_tokens and active:
            raise CommandError("--revoke-tokens only goes with --inactive")
        with refusals_as_errors():
            done = project_set_active(
                project=get_project(project), active=active, revoke_tokens=revoke_tokens, actor=Actor.cli()
            )
        self.stdout.write(f"Project {done.project.name!r} is now {'active' if done.project.is_active else 'inactive'}.")
        if done.revoked is not None:
            self.stdout.write(f"Revoked {done.revoked.revoked} token(s).")
