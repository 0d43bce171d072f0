"""Errors raised for bad input data: each names the file, the variable and the index involved.

* :class:`DataError` (a ``ValueError``): missing variables, mismatched grids, non-monotonic,
  duplicate or missing times, malformed CF attributes (time units, calendar, packing, fill
  values), truncated or corrupt files, all-NaN windows, files that match no glob. Raised where
  the problem is found, chaining the netCDF4 / cftime exception behind it (window reads only
  quote it in the message).
* :class:`DataTypeError` (a ``DataError`` and a ``TypeError``): a variable whose dtype cannot be
  read as a field (not floating point, and not integers packed with ``scale_factor``).
"""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """Invalid or unreadable input data; the message names file, variable and index."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        variable: str | None = None,
        index: Any = None,
    ) -> None:
        self.path, self.variable, self.index, self.reason = path, variable, index, message
        where = [str(path)] if path is not None else []
        if variable is not None:
            where.append(f"variable {variable!r}")
        if index is not None:
            where.append(f"index {index}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class DataTypeError(DataError, TypeError):
    """A variable's dtype cannot be decoded to a floating-point field."""
