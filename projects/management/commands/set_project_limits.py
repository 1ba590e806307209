from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.limits import BudgetPeriod, usd
from projects.management.cli import get_project, limit_or_none, refusals_as_errors, usd_amount
from projects.services import project_set_limits


class Command(BaseCommand):
    help = (
        "Set, change or remove (none) a project's limits, for all its tokens together: requests and tokens per "
        "minute, and a dollar budget per period. Limits not given stay as they are; each bites on the next request."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project name or ID")
        parser.add_argument("--rpm", type=limit_or_none(int), default=..., help="requests per minute, or none")
        parser.add_argument("--tpm", type=limit_or_none(int), default=..., help="tokens per minute, or none")
        parser.add_argument("--budget-usd", type=limit_or_none(usd_amount), default=..., help="budget in USD, or none")
        parser.add_argument("--budget-period", choices=BudgetPeriod.values, default=..., help="default: month")

    def handle(self, *args, project: str, rpm, tpm, budget_usd, budget_period, **options):
        given = {
            "requests_per_minute": rpm,
            "tokens_per_minute": tpm,
            "budget_usd": budget_usd,
            "budget_period": budget_period,
        }
        limits = {name: value for name, value in given.items() if value is not ...}
        if not limits:
            raise CommandError("give at least one of --rpm, --tpm, --budget-usd, --budget-period")
        with refusals_as_errors():
            target = project_set_limits(project=get_project(project), actor=Actor.cli(), **limits)
        budget = "none" if target.budget_usd is None else f"{usd(target.budget_usd)} per {target.budget_period}"
        self.stdout.write(
            f"Project {target.name!r}: requests per minute {target.requests_per_minute or 'none'}, tokens per minute "
            f"{target.tokens_per_minute or 'none'}, budget {budget}."
        )
