import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the first admin user (username `admin`) if there is no superuser yet. The password is "
        "ADMIN_PASSWORD when set, otherwise a random one printed once. Does nothing when a superuser exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default=None, help="defaults to $ADMIN_PASSWORD, else random")

    def handle(self, *args, username: str, password: str | None, **options):
        import os

        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        given = password or os.environ.get("ADMIN_PASSWORD")
        password = given or secrets.token_urlsafe(15)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"Created admin user '{username}'.")
        if not given:
            self.stdout.write(f"  Password (shown once, change it after logging in): {password}")
