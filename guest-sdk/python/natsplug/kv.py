"""NATS KV buckets, through `wasi:keyvalue` (store, atomics, batch) and natsplug's revisions
(`natsplug:plugin/kv`). Only the buckets the manifest grants can be opened::

    [kv]
    buckets = { tally = "read-write" }      # or "read"

    from natsplug import kv

    bucket = kv.open("tally")
    entry = bucket.entry(key)                                  # None, or value and revision
    count = int(entry.value) + 1 if entry else 1
    try:
        bucket.compare_and_swap(key, str(count), entry.revision if entry else 0)
    except kv.Conflict:
        raise Retry("someone else wrote it first", delay_ms=10) from None

A `Bucket` has `get`, `set`, `delete`, `exists`, `keys`, `increment`, `get_many`, `set_many`,
`delete_many`, and the revisions: `entry` (an `Entry`: value and revision) and
`compare_and_swap`.

A handler may run twice for one input (a retry, a redelivery): `compare_and_swap` writes only if
the key is still at the revision it read, so an update is applied once.

Every failure is a `KvError`: `AccessDenied` (a bucket the manifest does not grant, or a write
to one granted "read"), `NoSuchStore` (a bucket the host does not know), `Conflict` (a
compare-and-swap that lost), and `KvError` itself for anything else the store reports (an
invalid key, a lost connection: its message says what).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Union

from componentize_py_types import Err
from wit_world.imports import atomics as _atomics
from wit_world.imports import batch as _batch
from wit_world.imports import kv as _kv
from wit_world.imports import store as _store

__all__ = ["AccessDenied", "Bucket", "Conflict", "Entry", "KvError", "NoSuchStore", "open"]

Value = Union[bytes, bytearray, memoryview, str]


def _bytes(value: Value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


class KvError(Exception):
    """A KV call failed. Raised as it is for a failure of the store itself (its message says
    what); the subclasses are the conditions a handler may want to tell apart."""


class NoSuchStore(KvError):
    """The host does not know the bucket."""

    def __init__(self, message: str = "no such store") -> None:
        super().__init__(message)


class AccessDenied(KvError):
    """The manifest does not allow the call: a bucket its ``[kv] buckets`` does not grant, or a
    write to one granted ``"read"``."""

    def __init__(self, message: str = "access denied") -> None:
        super().__init__(message)


class Conflict(KvError):
    """A `Bucket.compare_and_swap` did not store: the key is no longer at the revision given
    (another writer got there first). Read it again, or raise a `Retry`."""

    def __init__(self, key: str, revision: int) -> None:
        self.key = key
        """The key that was written."""
        self.revision = revision
        """The revision the write expected."""
        if revision == 0:
            super().__init__(f"conflict: {key} already has a value")
        else:
            super().__init__(f"conflict: {key} is no longer at revision {revision}")


def _error(error) -> KvError:
    """The exception for a `wasi:keyvalue/store.error`."""
    if isinstance(error, _store.Error_NoSuchStore):
        return NoSuchStore()
    if isinstance(error, _store.Error_AccessDenied):
        return AccessDenied()
    if isinstance(error, _store.Error_Other):
        return KvError(error.value)
    return KvError(f"unknown store error: {error!r}")  # pragma: no cover - a newer WIT


@dataclass(frozen=True)
class Entry:
    """A key's value and the revision of the bucket that stored it."""

    value: bytes
    """The value."""
    revision: int
    """Its revision: what `Bucket.compare_and_swap` expects to write over it."""


class Bucket:
    """An open NATS KV bucket. Make one with `open`.

    Keys are strings, values bytes (a str is stored as UTF-8). Use it as a context manager, or
    call `close`, to release it at once; otherwise it is released when it is garbage collected.
    """

    __slots__ = ("name", "_bucket")

    def __init__(self, name: str, bucket) -> None:
        self.name: str = name
        """The bucket's name, as given to `open`."""
        self._bucket = bucket

    def _open(self):
        if self._bucket is None:
            raise ValueError(f"bucket {self.name} is closed")
        return self._bucket

    def get(self, key: str) -> Optional[bytes]:
        """The key's value; None if it has none (never set, or deleted)."""
        try:
            value = self._open().get(key)
        except Err as e:
            raise _error(e.value) from None
        return None if value is None else bytes(value)

    def set(self, key: str, value: Value) -> None:
        """Stores `value` for the key, over any value it had."""
        try:
            self._open().set(key, _bytes(value))
        except Err as e:
            raise _error(e.value) from None

    def delete(self, key: str) -> None:
        """Deletes the key's value; nothing happens if it has none."""
        try:
            self._open().delete(key)
        except Err as e:
            raise _error(e.value) from None

    def exists(self, key: str) -> bool:
        """Whether the key has a value."""
        try:
            return bool(self._open().exists(key))
        except Err as e:
            raise _error(e.value) from None

    def keys(self) -> list[str]:
        """Every key that has a value, in no particular order (all the pages of `list-keys`).
        Can be expensive on a large bucket."""
        keys: list[str] = []
        cursor: Optional[int] = None
        while True:
            try:
                page = self._open().list_keys(cursor)
            except Err as e:
                raise _error(e.value) from None
            keys.extend(page.keys)
            if page.cursor is None:
                return keys
            if page.cursor == cursor:
                raise KvError(f"list-keys returned cursor {cursor} twice")
            cursor = page.cursor

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds `delta` (0 or more) to the key's number, atomically, and returns the new number.
        A key with no value starts from 0."""
        if delta < 0:
            raise ValueError(f"increment takes a delta of 0 or more, not {delta}")
        try:
            return _atomics.increment(self._open(), key, delta)
        except Err as e:
            raise _error(e.value) from None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of the keys that have one, by key (a key with no value is left out)."""
        try:
            pairs = _batch.get_many(self._open(), list(keys))
        except Err as e:
            raise _error(e.value) from None
        return {key: bytes(value) for key, value in (p for p in pairs if p is not None)}

    def set_many(self, items: Union[Mapping[str, Value], Iterable[tuple[str, Value]]]) -> None:
        """Stores several values: a mapping or (key, value) pairs. Not atomic: on an error,
        some may be stored."""
        pairs = items.items() if isinstance(items, Mapping) else items
        try:
            _batch.set_many(self._open(), [(key, _bytes(value)) for key, value in pairs])
        except Err as e:
            raise _error(e.value) from None

    def delete_many(self, keys: Iterable[str]) -> None:
        """Deletes several keys' values. Not atomic: on an error, some may be deleted."""
        try:
            _batch.delete_many(self._open(), list(keys))
        except Err as e:
            raise _error(e.value) from None

    def entry(self, key: str) -> Optional[Entry]:
        """The key's value and revision; None if it has no value."""
        try:
            entry = _kv.get_entry(self._open(), key)
        except Err as e:
            raise _error(e.value) from None
        return None if entry is None else Entry(value=bytes(entry.value), revision=entry.revision)

    def compare_and_swap(self, key: str, value: Value, revision: int) -> int:
        """Stores `value` only if the key is still at `revision` (0: only if it has no value),
        and returns the new revision. Raises `Conflict` if it is not."""
        try:
            return _kv.compare_and_swap(self._open(), key, _bytes(value), revision)
        except Err as e:
            if isinstance(e.value, _kv.CasError_Conflict):
                raise Conflict(key, revision) from None
            raise _error(e.value.value) from None

    def close(self) -> None:
        """Releases the bucket now; it cannot be used after."""
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            bucket.__exit__(None, None, None)

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bucket({self.name!r})"


def open(name: str) -> Bucket:
    """Opens the bucket `name`, which the manifest's ``[kv] buckets`` must grant. Raises
    `AccessDenied` when it does not, `NoSuchStore` when the host does not know it."""
    try:
        return Bucket(name, _store.open(name))
    except Err as e:
        raise _error(e.value) from None
