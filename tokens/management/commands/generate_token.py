from datetime import timedelta

from django.core.management.base import BaseCommand

from llmproxy.audit import Actor
from projects.management.cli import get_project, refusals_as_errors
from tokens.services import token_generate


class Command(BaseCommand):
    help = (
        "Generate a token for a project and print only the token, so `TOKEN=$(manage.py generate_token --project "
        "demo --hours 1)` works. The token is shown this once; only its digest is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or ID")
        duration = parser.add_mutually_exclusive_group(required=True)
        duration.add_argument("--hours", type=int, help="lifetime in hours")
        duration.add_argument("--minutes", type=int, help="lifetime in minutes")
        parser.add_argument("--max-requests", type=int, default=None, help="request limit (default: unlimited)")
        parser.add_argument("--label", default="", help="who or what holds the token")

    def handle(self, *args, project: str, hours, minutes, max_requests, label: str, **options):
        duration = timedelta(hours=hours) if hours is not None else timedelta(minutes=minutes)
        with refusals_as_errors():
            issued = token_generate(
                project=get_project(project),
                duration=duration,
                max_requests=max_requests,
                label=label,
                actor=Actor.cli(),
            )
        self.stdout.write(issued.plaintext)
