"""Sign-in with throttling (workflows.access.login_throttle).

The backend refuses a locked account or address whatever the password, on every path that
authenticates (the sign-in page and the admin's); the page's form says why, and the signals
count failures and clear an account's count on success.
"""

from __future__ import annotations

import math

from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError

from workflows.access import login_throttle


def client_address(request) -> str:
    # uvicorn runs with --proxy-headers: behind a trusted proxy this is the client's address.
    return (request.META.get("REMOTE_ADDR") or "") if request is not None else ""


class ThrottledModelBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(self._username_field(), "")
        if login_throttle.locked_for(username=username or "", address=client_address(request)):
            # PermissionDenied stops authenticate() at once: no other backend is asked.
            raise PermissionDenied("too many failed sign-ins")
        return super().authenticate(request, username=username, password=password, **kwargs)

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "locked": (
            "Too many failed sign-ins for this account or from this address. "
            "Try again in %(minutes)s minute(s)."
        ),
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        wait = login_throttle.locked_for(username=username, address=client_address(self.request))
        self.locked_seconds = wait
        if wait:
            raise ValidationError(
                self.error_messages["locked"],
                code="locked",
                params={"minutes": max(1, math.ceil(wait / 60))},
            )
        return super().clean()


class LoginView(auth_views.LoginView):
    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error("__all__", code="locked"):
            response.status_code = 429
            response["Retry-After"] = str(form.locked_seconds)
        return response


def on_login_failed(sender, credentials, request=None, **kwargs):
    login_throttle.record_failure(
        username=str(credentials.get("username") or ""), address=client_address(request)
    )


def on_logged_in(sender, request, user, **kwargs):
    login_throttle.clear_account(username=user.get_username())
