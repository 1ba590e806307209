from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from llmproxy.audit import Actor
from projects.management.cli import get_project
from projects.services import project_set_active
from tokens.services import project_tokens_revoke


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
        actor = Actor.cli()
        with transaction.atomic():
            target = project_set_active(project=get_project(project), active=active, actor=actor)
            revoked = project_tokens_revoke(project=target, actor=actor) if revoke_tokens else None
        self.stdout.write(f"Project {target.name!r} is now {'active' if target.is_active else 'inactive'}.")
        if revoked is not None:
            self.stdout.write(f"Revoked {revoked} token(s).")
