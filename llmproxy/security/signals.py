"""Failed admin logins become security events."""

from django.contrib.auth import get_user_model
from django.http import HttpRequest

from .events import record_security_event
from .models import SecurityEventKind


def record_failed_login(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    """Receiver of `user_login_failed`: the attempted user name and the peer address, never the password.

    Only logins over HTTP (with a request) are recorded; the address is `REMOTE_ADDR`, never X-Forwarded-For.
    """
    if request is None:
        return
    record_security_event(
        kind=SecurityEventKind.ADMIN_LOGIN_FAILED,
        client_ip=request.META.get("REMOTE_ADDR"),
        username=str(credentials.get(get_user_model().USERNAME_FIELD, "")),
    )
