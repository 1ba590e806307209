from datetime import timedelta

from django.core.management.base import BaseCommand

from llmproxy.audit import Actor
from projects.management.cli import add_policy_arguments, get_project, policy_given, refusals_as_errors, usd_amount
from projects.policy import TOKEN_POLICY_FIELDS
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
        parser.add_argument("--rpm", type=int, default=None, help="requests per minute (default: no limit)")
        parser.add_argument("--tpm", type=int, default=None, help="tokens per minute (default: no limit)")
        parser.add_argument("--budget-usd", type=usd_amount, default=None, help="budget over the token's life, in USD")
        parser.add_argument("--label", default="", help="who or what holds the token")
        add_policy_arguments(parser, TOKEN_POLICY_FIELDS)  # within the project's own lists

    def handle(self, *args, project: str, hours, minutes, max_requests, rpm, tpm, budget_usd, label: str, **options):
        duration = timedelta(hours=hours) if hours is not None else timedelta(minutes=minutes)
        with refusals_as_errors():
            issued = token_generate(
                project=get_project(project),
                duration=duration,
                label=label,
                actor=Actor.cli(),
                max_requests=max_requests,
                requests_per_minute=rpm,
                tokens_per_minute=tpm,
                budget_usd=budget_usd,
                **policy_given(options, TOKEN_POLICY_FIELDS),
            )
        self.stdout.write(issued.plaintext)
