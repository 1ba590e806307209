import json
from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.management.cli import refusals_as_errors
from proxy.price_files import read_price_file
from proxy.services import prices_load


class Command(BaseCommand):
    help = (
        "Add or update model prices from a price file: ours (a JSON object of model names or patterns to "
        "input_per_million, cached_input_per_million and output_per_million, in US dollars) or LiteLLM's "
        "model_prices_and_context_window.json (its OpenAI entries). Other entries are left alone unless --replace. "
        "Prints what it did; -v 2 also lists each entry."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="the price file (JSON)")
        parser.add_argument(
            "--replace", action="store_true", help="also remove every price that the file does not give"
        )

    def handle(self, *args, file: Path, replace: bool, verbosity: int, **options):
        try:
            data = json.loads(file.read_bytes())
        except OSError as error:
            raise CommandError(f"cannot read {file}: {error.strerror or error}") from None
        except ValueError as error:
            raise CommandError(f"{file} is not valid JSON: {error}") from None
        try:
            found = read_price_file(data, path=file)
        except ValueError as error:
            raise CommandError(f"{file}: {error}") from None
        with refusals_as_errors():
            report = prices_load(entries=found.entries, skipped=found.skipped, replace=replace, actor=Actor.cli())
        if verbosity >= 2:
            for verb, models in (
                ("added", report.added),
                ("updated", report.updated),
                ("removed", report.removed),
            ):
                for model in models:
                    self.stdout.write(f"{verb} {model}")
            for skipped in report.skipped:
                self.stdout.write(f"skipped {skipped.model}: {skipped.reason} ({skipped.detail})")
        reasons = Counter(skipped.reason for skipped in report.skipped)
        why = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        self.stdout.write(
            f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
            f"removed {len(report.removed)}, skipped {len(report.skipped)}" + (f" ({why})" if why else "")
        )
