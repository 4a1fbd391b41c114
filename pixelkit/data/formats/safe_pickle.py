"""A restricted unpickler for the refer toolkit's ``refs(unc).p`` files.

``pickle.load`` runs whatever callable a pickle names (``os.system`` through
``__reduce__``, for one), so a downloaded pickle must never go through it. The refs
files hold only plain containers (dicts, lists, strings, numbers, tuples, None, bools;
newer protocols add bytes, sets and frozensets), and the pickle opcodes for those build
them directly without looking up any global.
So :class:`PlainDataUnpickler` refuses *every* global: anything beyond plain data is
refused with an error that names the file and the global.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, NoReturn

from pixelkit.data.schema import DataFormatError


class UnsafePickleError(DataFormatError, pickle.UnpicklingError):
    """A pickle asked for a global (a class or function); nothing was executed."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and refuses every global.

    Args:
        file: binary file object to read.
        name: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase, name: str) -> None:
        # The refer toolkit wrote its pickles with Python 2; their ``str`` objects are
        # byte strings holding UTF-8 text, so decode them as UTF-8 (a superset of the
        # ASCII that pickle assumes by default).
        super().__init__(file, encoding="utf-8", errors="strict")
        self._name = name

    def find_class(self, module: str, name: str) -> NoReturn:
        raise UnsafePickleError(
            f"{self._name}: refused to load the global {module}.{name} from the pickle: "
            "only plain data (dict, list, tuple, str, int, float, bool, None) is allowed, "
            "and nothing in this file was executed"
        )

    def persistent_load(self, pid: Any) -> NoReturn:
        raise UnsafePickleError(
            f"{self._name}: refused a persistent id in the pickle ({pid!r}); "
            "only plain data is allowed"
        )


def load_plain_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle that must contain plain data only.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (dicts, lists, tuples, strings, numbers, None, bools).

    Raises:
        UnsafePickleError: the pickle references a global; the message names it.
        DataFormatError: the file is not a readable pickle.
    """
    with open(path, "rb") as f:
        try:
            return PlainDataUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except UnicodeDecodeError as e:
            raise DataFormatError(
                f"{path}: a string in the pickle is not UTF-8 ({e.reason})"
            ) from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            MemoryError,
        ) as e:
            raise DataFormatError(
                f"{path}: not a readable pickle ({type(e).__name__}: {e})"
            ) from None
