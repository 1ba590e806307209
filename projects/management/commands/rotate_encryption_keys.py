from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from projects.services import project_keys_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored upstream API key under the newest (first) entry of ENCRYPTION_KEYS. To rotate: "
        "put a new key first (ENCRYPTION_KEYS=new,old), restart, run this, then drop the old key. Safe to run again: "
        "keys already under the newest entry are left alone. Exits non-zero if any key cannot be decrypted."
    )

    def handle(self, *args, **options):
        report = project_keys_reencrypt(actor=Actor.cli())
        self.stdout.write(
            f"Re-encrypted: {report.reencrypted}, already current: {report.already_current}, "
            f"failed to decrypt: {len(report.failed)}"
        )
        if report.failed:
            names = ", ".join(f"{p.name} ({p.pk})" for p in report.failed)
            raise CommandError(
                f"cannot decrypt the upstream key of {len(report.failed)} project(s) with ENCRYPTION_KEYS: {names}. "
                "Add back the key they were written with, or set a new upstream key on those projects."
            )
