from argparse import ArgumentTypeError

from django.conf import settings
from django.core.management.base import BaseCommand

from llmproxy.audit import Actor
from proxy.retention import DEFAULT_BATCH_SIZE, usage_purge


def _at_least_one(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return int(value)


class Command(BaseCommand):
    help = (
        "Delete usage records and security events older than USAGE_RETENTION_DAYS (or --days), in small batches, "
        "login throttles no longer needed and expired cached answers; the per-day usage sums are kept. Run it "
        "daily, e.g. from cron."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=_at_least_one,
            help=f"keep this many days (default: USAGE_RETENTION_DAYS, here {settings.USAGE_RETENTION_DAYS})",
        )
        parser.add_argument(
            "--batch-size",
            type=_at_least_one,
            default=DEFAULT_BATCH_SIZE,
            help=f"rows deleted per statement, each in its own short transaction (default {DEFAULT_BATCH_SIZE})",
        )
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    def handle(self, *args, days: int | None, batch_size: int, dry_run: bool, **options):
        result = usage_purge(actor=Actor.cli(), days=days, batch_size=batch_size, dry_run=dry_run)
        verb = "would delete" if result.dry_run else "deleted"
        self.stdout.write(
            f"{verb} {result.usage_records} usage records and {result.security_events} security events "
            f"older than {result.cutoff.isoformat(timespec='seconds')}, "
            f"and {result.login_throttles} login throttles no longer needed; {result.cache_entries} expired cached "
            "answers"
        )
