"""CRC-32 checks of ``torch.save`` files (zip archives), which ``torch.load`` never does.

One check serves the checkpoint reader (:func:`npa_train.checkpoint.verify_checkpoint_file`)
and ``--pretrained`` state dicts (:func:`npa_train.model.load_pretrained`); each wraps the
result in its own error. Standard library only.
"""

from __future__ import annotations

import os
import zipfile
import zlib

__all__ = ["ZIP_READ_ERRORS", "damaged_entry"]

#: What reading a damaged or foreign archive can raise.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def damaged_entry(path: str | os.PathLike) -> str | None:
    """The name of the first entry of a zip archive whose CRC-32 does not match, or None.

    Parameters
    ----------
    path : str or path-like
        A ``torch.save`` file (zip format, torch >= 1.6).

    Returns
    -------
    str or None
        The damaged entry's name, None when every entry matches its checksum.

    Raises
    ------
    zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError
        The file is not a readable zip archive (see :data:`ZIP_READ_ERRORS`).
    """
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()
