from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"

    def ready(self) -> None:
        # Register the Celery tasks in every process: the services send them by name
        # (workflows/runs/task_queue.py) and never import the module that defines them.
        from workflows import tasks  # noqa: F401
