"""COS_AUTH_TOKENS_FILE, re-read while the node runs (docs/operations.md, "Security").

Every COS_TLS_RELOAD_INTERVAL the file is checked; a changed file that parses replaces every token at once
(a token no longer listed is refused from the next call on). A file that cannot be read or does not parse
is logged at WARN once per change, and the tokens already loaded stay in force: a half-written file must
not lock every client out, nor let everyone in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chiefofstate.api.file_watch import PeriodicCheck, Signature, signature
from chiefofstate.core.auth import TokenBook, TokensFileError, parse_tokens

log = logging.getLogger("chiefofstate.auth")

_UNREADABLE: Signature = ((-1, -1, -1),)  # the file could not even be looked at


class TokenFile:
    """The tokens in force; `book` is read by every call's check, replaced whole by a reload."""

    def __init__(self, path: Path, book: TokenBook, interval_s: float) -> None:
        self.path = path
        self.book = book
        try:
            self._loaded: Signature = signature((path,))
        except OSError:
            self._loaded = _UNREADABLE
        self._refused: Signature | None = None
        self._checks = PeriodicCheck(self.reload_if_changed, interval_s, "tokens-reload")

    def start(self) -> None:
        self._checks.start()

    async def close(self) -> None:
        await self._checks.close()

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last load; True when new tokens were taken."""
        try:
            current = signature((self.path,))
        except OSError as error:
            self._refuse(_UNREADABLE, f"cannot be read ({error.strerror or error})")
            return False
        if current in (self._loaded, self._refused):
            return False
        try:
            book = parse_tokens(self.path.read_text())
        except OSError as error:
            self._refuse(current, f"cannot be read ({error.strerror or error})")
            return False
        except UnicodeDecodeError:
            self._refuse(current, "is not UTF-8 text")
            return False
        except TokensFileError as error:  # names the line, never a token
            self._refuse(current, f"does not parse ({error})")
            return False
        self.book, self._loaded, self._refused = book, current, None
        log.warning("auth: tokens reloaded from %s (%d tokens)", self.path, len(book.entries))
        return True

    def _refuse(self, seen: Signature, why: str) -> None:
        if seen != self._refused:  # once per change of the file, not at every check
            log.warning("auth: %s %s; keeping the tokens loaded before", self.path, why)
        self._refused = seen
