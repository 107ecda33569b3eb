"""Reading the project's CSV inputs (manifests, dataset lists, labels, GT intervals)."""

from __future__ import annotations

import os

import pandas as pd

from vadpipe.errors import ManifestError

#: ``float_format`` of score columns: nine significant digits, so every float32 score reads
#: back exactly (``%.6g`` lost up to 5e-7, enough to reorder near-tied scores and move an AUC).
FLOAT32_FORMAT = "%.9g"


def read_string_csv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """Every cell as ``str`` (empty cells as ``""``), header names stripped of spaces.

    Raises:
        ManifestError: the file is missing, empty, not CSV or not text; the message names
            ``what`` the file was supposed to be and the path.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read {what} {path}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df
