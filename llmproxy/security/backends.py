"""The authentication backend every login goes through: Django's `ModelBackend` behind the login throttle.

A backend rather than the admin's login view: it wraps the one place a login hashes a password, so the throttle
holds for every caller of `django.contrib.auth.authenticate` with a request (the admin login form, and any login
form added later) and cannot be skipped by a form that forgets it. Logins without a request (the shell, tests'
`client.login`) are not throttled.
"""

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from . import throttle


class ThrottledModelBackend(ModelBackend):
    """Refuses a locked user name or address, and an attempt over the hashing bound, before any password is hashed
    (marking the request with why, for the login form); a success clears the user name's failures."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs
    ) -> AbstractBaseUser | None:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if request is None or username is None or password is None:
            return super().authenticate(request, username, password, **kwargs)
        attempt = throttle.Attempt.of(request, username)
        try:
            had_failures = throttle.check(attempt)
            with throttle.password_checks.admit():
                user = super().authenticate(request, username, password, **kwargs)
        except throttle.LoginRefused as refusal:
            throttle.refuse(request, refusal)
            # Stops `authenticate`; the failed-login receiver sees the mark and counts no failure.
            raise PermissionDenied from refusal
        if user is not None and had_failures:
            throttle.clear_failures(attempt)
        return user

    async def aauthenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs
    ) -> AbstractBaseUser | None:
        """The same rule for async callers (ModelBackend's own would skip it)."""
        return await sync_to_async(self.authenticate)(request, username, password, **kwargs)
