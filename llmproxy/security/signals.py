"""Failed admin logins become security events and count towards the login throttle."""

from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest

from . import throttle
from .events import record_security_event
from .models import SecurityEventKind


def record_failed_login(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    """Receiver of `user_login_failed`: the attempted user name and the peer address, never the password; the event
    and the throttle's count (and a lockout it causes) in one transaction.

    Only logins over HTTP (with a request) are recorded; the address is `REMOTE_ADDR`, never X-Forwarded-For. An
    attempt the throttle refused before checking the password is no failure: it is not counted.
    """
    if request is None or throttle.refusal(request):
        return
    username = str(credentials.get(get_user_model().USERNAME_FIELD, ""))
    with transaction.atomic():
        record_security_event(
            kind=SecurityEventKind.ADMIN_LOGIN_FAILED, client_ip=request.META.get("REMOTE_ADDR"), username=username
        )
        throttle.record_failure(throttle.Attempt.of(request, username))
