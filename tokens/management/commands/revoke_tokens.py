import uuid

from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import get_project
from tokens import secret
from tokens.models import Token
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
            revoked = project_tokens_revoke(project=target, actor=actor)
            total = Token.objects.filter(project=target).count()
            self.stdout.write(
                f"Revoked {revoked} token(s) of project {target.name!r}; {total - revoked} already revoked, "
                f"{total} in all."
            )
            return
        found = _find_token(token)
        if token_revoke(token=found, actor=actor):
            self.stdout.write(f"Revoked token {found.pk} ({found}).")
        else:
            self.stdout.write(f"Token {found.pk} ({found}) was already revoked.")


def _find_token(reference: str) -> Token:
    reference = reference.strip()
    if secret.is_well_formed(reference):
        found = Token.objects.filter(digest=secret.digest(reference)).first()
    else:
        try:
            found = Token.objects.filter(pk=uuid.UUID(reference)).first()
        except ValueError:
            raise CommandError(f"not a token ID or a whole {secret.PREFIX}… token: {reference!r}") from None
    if found is None:
        raise CommandError("token not found")
    return found
