"""A third-party head package used by the tests: installed only through a distribution's entry point."""

__version__ = "0.1.0"
