"""A third-party task package used by the tests: installed only through a distribution's entry point."""

__version__ = "0.3.1"
