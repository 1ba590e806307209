from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import get_project
from tokens.selectors import token_by_reference
from tokens.services import project_tokens_revoke, token_revoke


class Command(BaseCommand):
    help = "Revoke one token (by ID or the whole token) or every token of a project. Revocation cannot be undone here."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--token", help="token ID, or the whole sk-wt-… token")
        target.add_argument("--project", help="project name or ID: revoke all its tokens")

    def handle(self, *args, token: str | None, project: str | None, **options):
        actor = Actor.cli()
        if project is not None:
            target = get_project(project)
            report = project_tokens_revoke(project=target, actor=actor)
            self.stdout.write(
                f"Revoked {report.revoked} token(s) of project {target.name!r}; {report.already_revoked} already "
                f"revoked, {report.total} in all."
            )
            return
        try:
            found = token_by_reference(token)
        except ValueError as e:
            raise CommandError(str(e)) from None
        if found is None:
            raise CommandError("token not found")
        if token_revoke(token=found, actor=actor):
            self.stdout.write(f"Revoked token {found.pk} ({found}).")
        else:
            self.stdout.write(f"Token {found.pk} ({found}) was already revoked.")
