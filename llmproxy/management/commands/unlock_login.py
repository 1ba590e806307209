import logging

from django.core.management.base import BaseCommand, CommandError

from llmproxy.audit import Actor
from llmproxy.security import throttle
from llmproxy.security.events import normalise_ip

logger = logging.getLogger("llmproxy.security.throttle")


class Command(BaseCommand):
    help = (
        "Lift an admin login lockout before it ends: of a user name (--user) and/or a client address (--address; an "
        "IPv6 address lifts its /64), forgetting their failures and lockout series."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", default="", help="the user name, as typed on the login page")
        parser.add_argument("--address", default="", help="the client IP address")

    def handle(self, *args, user: str, address: str, **options):
        if not user and not address:
            raise CommandError("name a --user, an --address or both")
        if address and not normalise_ip(address):
            raise CommandError(f"not an IP address: {address!r}")
        cleared = throttle.unlock(username=user, client_ip=address)
        logger.info("login unlock by %s: user %r, address %r (%d rows cleared)", Actor.cli(), user, address, cleared)
        self.stdout.write(f"cleared {cleared} login throttles")
