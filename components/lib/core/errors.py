"""The one exception type for mistakes a user can fix (bad file, column, key)."""


class UserError(Exception):
    """A one-line message naming the file, column or key at fault; CLIs print it and exit 2."""


class DataError(UserError):
    """A table that breaks its Parquet contract."""
