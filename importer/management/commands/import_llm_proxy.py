from django.core.management.base import BaseCommand, CommandError

from importer import keys, original
from importer.services import apply_import, plan_import
from llmproxy.audit import Actor
from projects.management.cli import add_upstream_arguments, refusals_as_errors
from projects.upstreams import clean_upstream_auth, clean_upstream_url, default_auth

KINDS = (("project", "projects"), ("token", "tokens"), ("audit event", "audit events"))


class Command(BaseCommand):
    help = (
        "Import the Go LLM Proxy's database (a SQLite file or PostgreSQL): its projects (with their upstream keys, "
        "decrypted with its ENCRYPTION_KEY when it encrypted them), its tokens (which keep working unchanged) and its "
        "audit events. Rows already here are left alone, so running it again changes nothing; --dry-run only says "
        "what it would do. Exits 1 when some rows cannot be imported (each is listed, with why)."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--sqlite", metavar="PATH", help="the original's SQLite file (opened read-only)")
        source.add_argument(
            "--database-url",
            metavar="URL",
            help="the original's PostgreSQL database, postgres://user@host:5432/db (read-only; the password may "
            "come from PGPASSWORD or ~/.pgpass rather than the URL)",
        )
        key = parser.add_mutually_exclusive_group()
        key.add_argument(
            "--source-encryption-key-env",
            metavar="NAME",
            help="the NAME of an environment variable holding the original's ENCRYPTION_KEY (never the key itself)",
        )
        key.add_argument(
            "--source-encryption-key-file", metavar="PATH", help="a file holding the original's ENCRYPTION_KEY"
        )
        add_upstream_arguments(parser)  # the original served one upstream: every imported project gets it
        parser.add_argument("--dry-run", action="store_true", help="say what would be imported; write nothing")

    def handle(self, *args, **options):
        try:
            encryption_key = keys.encryption_key(
                env=options["source_encryption_key_env"], file=options["source_encryption_key_file"]
            )
        except keys.EncryptionKeyError as error:
            raise CommandError(f"the original's ENCRYPTION_KEY: {error}") from None
        with refusals_as_errors():
            upstream_url = clean_upstream_url(options["upstream_url"])
            upstream_auth = clean_upstream_auth(options["upstream_auth"]) if options["upstream_auth"] else None
        try:
            if options["sqlite"]:
                rows = original.read_sqlite(options["sqlite"])
            else:
                rows = original.read_postgresql(options["database_url"])
        except original.SourceError as error:
            raise CommandError(str(error)) from None

        dry_run = options["dry_run"]
        plan = plan_import(
            rows,
            encryption_key=encryption_key,
            upstream_url=upstream_url,
            upstream_auth=upstream_auth or default_auth(upstream_url),
        )
        self.stdout.write(f"From the {rows.source}{' (dry run: nothing is written)' if dry_run else ''}:")
        verb = "to import" if dry_run else "imported"
        for kind, plural in KINDS:
            new, already, refused = plan.counts(kind)
            self.stdout.write(f"  {plural}: {new} {verb}, {already} already here, {refused} not imported")
        for note in plan.notes:
            self.stdout.write(f"Note: {note}")
        if plan.is_empty:
            if not plan.problems:
                self.stdout.write("Nothing to import: every row is here already.")
        elif dry_run:
            self.stdout.write("Dry run: nothing was written.")
        else:
            record = apply_import(plan, actor=Actor.cli())
            self.stdout.write(f"Imported (audit: {record}, {record.pk}).")
        if plan.problems:
            for problem in plan.problems:
                self.stderr.write(f"Not imported: {problem}")
            raise CommandError(f"{len(plan.problems)} row(s) could not be imported (listed above)")
