from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from dashboard.login import on_logged_in, on_login_failed

        user_login_failed.connect(on_login_failed, dispatch_uid="signalbox-login-failed")
        user_logged_in.connect(on_logged_in, dispatch_uid="signalbox-logged-in")
