"""Figures a test measured, shown in the run's summary.

A test asks for the ``figure`` fixture (``tests/conftest.py``) and calls it with a line; the
line travels with the test's report (``user_properties``), so it is printed under
pytest-xdist too, where a worker's own output is not shown.
"""

from __future__ import annotations

from collections.abc import Callable

Figure = Callable[[str], None]
FIGURE = "figure"  # the user property's name
