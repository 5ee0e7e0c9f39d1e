"""The one base class of prefstudy's own errors.

Each module raises its own kind (`data.DataError`, `config.ConfigError`, `columns.SchemaError`,
`models.ModelError`, …); all of them are `PrefstudyError`s, so the command line can turn any of
them into one line on stderr and exit status 2, and code that imports prefstudy can catch them
in one clause. The base is a `ValueError`, so `except ValueError` catches them too.
"""


class PrefstudyError(ValueError):
    """Bad input or state that prefstudy can name: the message says where and what."""
