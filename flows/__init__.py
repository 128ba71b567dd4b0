"""Prefect flows and the ``sentiflow`` command line."""

import tasks  # noqa: F401  (sets up logging of stage functions before Prefect is imported)
