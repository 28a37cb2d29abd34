"""The peers: PgQueuer, Procrastinate and Celery, run from their own venv (see section.py)."""
