"""Runs: matching accepted events, executing steps, waits, the journal, the Celery tasks."""
