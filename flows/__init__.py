"""Prefect flows and the ``sentiflow`` command line."""

import sentiflow.tasks  # noqa: F401  (sets up logging of stage functions before Prefect is imported)
