"""The ``medsamkit`` command line."""
