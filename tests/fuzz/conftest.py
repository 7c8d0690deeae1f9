"""The fuzz suite runs the domain on the unit tests' in-memory CAs."""

from tests.unit.conftest import ca_set, linter, make_world, world  # noqa: F401
