"""The file of a saved model's trained tensors: written as safetensors, read only as far as
they fit the model.

``TENSORS_FILE`` (``trainable.safetensors``) holds a JSON header (each tensor's name, dtype,
shape and byte range) and the raw data: reading it runs no code, and the header is checked
against the tensors the model trains before any data is read, so a file cannot make the reader
allocate more than those tensors take. Release 0.1 wrote ``LEGACY_TENSORS_FILE``
(``trainable.pt``, a ``torch.save`` zip); it is still read, with ``weights_only=True``, once its
zip directory shows that it unpacks to no more than the trained tensors take: ``torch.load``
allocates each storage whole, so a small file could otherwise hold a correctly shaped view into
a storage of gigabytes. That zip directory is located here as torch's reader (miniz) finds it,
and a layout that Python's ``zipfile`` (which then reads it) could see differently is refused.
The same zip check guards a trainer checkpoint's ``trainer_state.pt`` (``check_torch_zip``).
Used by ``serialization`` (saved models) and ``training`` (checkpoints).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from ..core.files import atomic_write

__all__ = [
    "LEGACY_TENSORS_FILE",
    "TENSORS_FILE",
    "check_torch_zip",
    "read_legacy",
    "read_safetensors",
    "write_tensors",
]

#: The trained tensors of a saved model (safetensors: a JSON header and raw bytes, no pickle).
TENSORS_FILE = "trainable.safetensors"
#: The trained tensors as release 0.1 saved them (``torch.save``); read, never written.
LEGACY_TENSORS_FILE = "trainable.pt"

#: safetensors' names of the dtypes a trained tensor may have.
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
#: Bytes a file may hold beyond the trained tensors' data: 64 KiB, plus 1 KiB and the name per
#: tensor (safetensors header, or the pickle and zip records of a 0.1 ``trainable.pt``).
_OVERHEAD = 64 * 1024


def write_tensors(directory: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write ``TENSORS_FILE`` (safetensors, on the CPU) into ``directory``, atomically.

    Returns:
        The file written.

    Examples:
        >>> import tempfile, torch
        >>> write_tensors(tempfile.mkdtemp(), {"w": torch.ones(2)}).name
        'trainable.safetensors'
    """
    # a copy of each: safetensors refuses tensors that share storage (views, tied weights)
    plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    file = Path(directory) / TENSORS_FILE
    atomic_write(file, safetensors.torch.save(plain, metadata={"format": "pt"}))
    return file


def _size_limit(expected: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(bytes of the tensors' data, bytes a file holding them may take at most)."""
    data = sum(t.numel() * t.element_size() for t in expected.values())
    return data, data + _OVERHEAD + sum(1024 + len(k.encode()) for k in expected)


def read_safetensors(file: Path, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file that holds exactly ``expected``'s.

    The header must name exactly the tensors of ``expected``, each with its dtype and shape,
    and the file must be exactly as long as its header and their data: all checked before
    safetensors opens the file, so it never reads (or allocates) more than they take.

    Args:
        file: The file.
        expected: The tensors the model trains: names, dtypes and shapes (values unused).

    Returns:
        Name -> tensor, on the CPU.

    Raises:
        ValueError: One line naming the file: a header that announces more bytes than the
            names need, is not JSON, names other tensors (a frozen weight, say) or other
            dtypes or shapes, lacks a tensor, or a file of another length.

    Examples:
        >>> import tempfile, torch
        >>> f = write_tensors(tempfile.mkdtemp(), {"w": torch.ones(2)})
        >>> read_safetensors(f, {"w": torch.zeros(2)})
        {'w': tensor([1., 1.])}
        >>> read_safetensors(f, {"w": torch.zeros(2, dtype=torch.float64)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...: the saved tensors do not fit this base model: w (saved F32, model F64)
    """
    data, limit = _size_limit(expected)
    with file.open("rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little")
        if length > limit - data:
            raise ValueError(
                f"{file} announces a header of {length} bytes, more than the trained tensors' "
                f"names take (at most {limit - data}): refused"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw) if len(prefix) == 8 and len(raw) == length else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{file} is corrupt or truncated (no safetensors header)")
    header.pop("__metadata__", None)
    if not all(isinstance(v, dict) and isinstance(v.get("shape"), list) for v in header.values()):
        raise ValueError(f"{file} is corrupt (a safetensors header entry without a shape)")
    saved = {k: (str(v.get("dtype")), tuple(v["shape"])) for k, v in header.items()}
    _check_fit(saved, expected, f"{file}: ")
    size = file.stat().st_size
    if size != 8 + length + data:
        raise ValueError(
            f"{file} holds {size:,} bytes where its header and the trained tensors take "
            f"{8 + length + data:,}: refused"
        )
    try:
        return safetensors.torch.load_file(file)
    except Exception as err:  # safetensors raises its own types for inconsistent offsets
        raise ValueError(f"{file} is corrupt or truncated ({type(err).__name__}: {err})") from None


def _check_fit(
    saved: Mapping[str, tuple[str | None, tuple[int, ...]]],
    expected: Mapping[str, torch.Tensor],
    prefix: str,
) -> None:
    """Refuse saved tensors that are not exactly ``expected``'s.

    Every saved tensor must be one of ``expected`` (frozen weights are never saved, so a frozen
    key is refused), with its shape and, where the saved dtype is known, its dtype; every one
    of ``expected`` must be saved.

    Args:
        saved: Name -> (safetensors dtype name, or ``None`` if unknown; shape) of what is saved.
        expected: The model's trained tensors (``PEFTModel.trained_state_dict()``).
        prefix: The start of the messages (the file's name).

    Raises:
        ValueError: Naming up to ten keys that do not fit, or that are missing.

    Examples:
        >>> import torch
        >>> _check_fit({"w": (None, (2,))}, {"w": torch.zeros(3)}, "f: ")
        Traceback (most recent call last):
        ...
        ValueError: f: the saved tensors do not fit this base model: w (saved (2,), model (3,))
    """
    problems = []
    for name, (dtype, shape) in saved.items():
        want = expected.get(name)
        wanted_dtype = _DTYPE_NAMES.get(want.dtype, str(want.dtype)) if want is not None else ""
        if want is None:
            problems.append(
                f"{name} (not a trained tensor of this model: frozen weights are never saved)"
            )
        elif shape != tuple(want.shape):
            problems.append(f"{name} (saved {shape}, model {tuple(want.shape)})")
        elif dtype is not None and dtype != wanted_dtype:
            problems.append(f"{name} (saved {dtype}, model {wanted_dtype})")
    if problems:
        raise ValueError(
            f"{prefix}the saved tensors do not fit this base model: {', '.join(problems[:10])}"
        )
    missing = [n for n in expected if n not in saved]
    if missing:
        raise ValueError(
            f"{prefix}the saved model lacks trained tensors: {', '.join(missing[:10])}"
        )


def read_legacy(file: Path, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` zip (release 0.1's ``trainable.pt``), read only when
    it is no larger than ``expected``'s tensors take.

    The file's size and its zip directory (uncompressed, as ``torch.save`` writes it) must
    show at most the bytes of ``expected``'s tensors plus their records before
    ``torch.load(weights_only=True)`` reads it. The directory is the one torch reads, and
    must be the only one any zip reader can find (``_zip_records``). Then it must hold exactly
    ``expected``'s names and shapes.

    Args:
        file: The file.
        expected: The tensors the model trains: names, dtypes and shapes (values unused).

    Returns:
        Name -> tensor, on the CPU.

    Raises:
        ValueError: One line naming the file: larger than the tensors take, compressed
            records, not a zip, an ambiguous zip directory, corrupt, not a dict of named
            tensors, or other tensors or shapes than ``expected``'s.

    Examples:
        >>> import tempfile, torch
        >>> f = Path(tempfile.mkdtemp()) / LEGACY_TENSORS_FILE
        >>> torch.save({"w": torch.ones(2)}, f)
        >>> read_legacy(f, {"w": torch.zeros(2)})
        {'w': tensor([1., 1.])}
        >>> torch.save({"w": torch.ones(10**5)[:2]}, f)  # a view into a larger storage
        >>> read_legacy(f, {"w": torch.zeros(2)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... bytes, more than the trained tensors take (8 bytes and their records)...
    """
    data, limit = _size_limit(expected)
    too_large = f"more than the trained tensors take ({data:,} bytes and their records): refused"
    size = file.stat().st_size
    if size > limit:
        raise ValueError(f"{file} holds {size:,} bytes, {too_large}")
    check_torch_zip(file, limit, too_large)
    try:
        tensors = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{file} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{file} does not hold a dict of named tensors")
    _check_fit({k: (None, tuple(v.shape)) for k, v in tensors.items()}, expected, f"{file}: ")
    return tensors


#: A zip's end record, zip64 end record and locator, and local record.
_END, _END64, _LOCATOR, _LOCAL = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x03\x04"
_END_SIZE, _END64_SIZE, _LOCATOR_SIZE, _LOCAL_SIZE = 22, 56, 20, 30
#: How far back from a zip's end its readers look for the end record (a comment of 64 KiB).
_TAIL = 0xFFFF + _END_SIZE


def check_torch_zip(
    file: Path, limit: int | None = None, too_large: str = "more than the file holds: refused"
) -> None:
    """Refuse a ``torch.save`` zip that ``torch.load`` could allocate more than ``limit`` bytes
    for (default: the file's size, which every file ``torch.save`` writes keeps to).

    ``torch.load`` allocates each record whole, at the size the zip directory declares, so the
    directory must be the unambiguous one ``_zip_records`` reads, its records stored (not
    compressed), and their sizes must add up to at most ``limit``: records that overlap, or a
    deflated storage of gigabytes in a small file, are refused before anything is allocated.

    Args:
        file: The file.
        limit: Bytes the records may take together at most; ``None``: the file's size.
        too_large: The end of the message when they take more.

    Raises:
        ValueError: One line naming the file and what is wrong with its zip directory.

    Examples:
        >>> import tempfile, torch
        >>> f = Path(tempfile.mkdtemp()) / "state.pt"
        >>> torch.save({"step": 3, "w": torch.ones(4)}, f)
        >>> check_torch_zip(f)
        >>> check_torch_zip(f, limit=16, too_large="more than 16: refused")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...state.pt unpacks to ... bytes, more than 16: refused
    """
    records = _zip_records(file)
    unpacked = sum(r.file_size for r in records)
    if unpacked > (file.stat().st_size if limit is None else limit):
        raise ValueError(f"{file} unpacks to {unpacked:,} bytes, {too_large}")
    if any(r.compress_type or r.compress_size != r.file_size for r in records):  # 0: stored
        raise ValueError(f"{file} holds compressed records, which torch.save never writes: refused")


def _zip_records(file: Path) -> list[zipfile.ZipInfo]:
    """The records of ``file``'s zip directory, the one torch's reader (miniz) finds.

    Zip readers differ in where they look: Python's ``zipfile`` re-bases a directory that
    does not sit right before the end record, and ignores the zip64 locator's offset, while
    miniz follows both offsets. So the file must have the one layout they agree on, as
    ``torch.save`` writes it: one end record, at the very end (no comment); the zip64 end
    record, if any, right before its locator; the central directory right before those.
    Then both readers parse the same directory, which ``zipfile`` reads here: it must hold
    exactly the entries the end record counts (miniz reads that many), with distinct names,
    each a local record before the directory. Anything else is refused as ambiguous.

    Raises:
        ValueError: One line naming the file and what is wrong with its zip directory.

    Examples:
        >>> import tempfile, torch
        >>> f = Path(tempfile.mkdtemp()) / LEGACY_TENSORS_FILE
        >>> torch.save({"w": torch.ones(2)}, f)
        >>> _zip_records(f)[0].filename
        'trainable/data.pkl'
        >>> _ = f.write_bytes(f.read_bytes() + b"trailing")
        >>> _zip_records(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... is corrupt or truncated, or an ambiguous zip (no end record at its end...
    """
    size = file.stat().st_size
    with file.open("rb") as f:

        def read(offset: int, length: int) -> bytes:
            f.seek(max(offset, 0))
            raw = f.read(length)
            if offset < 0 or len(raw) != length:
                raise ValueError(f"{file}: its zip directory points outside the file: refused")
            return raw

        end = size - _END_SIZE
        tail = read(max(0, size - _TAIL), min(size, _TAIL))
        at_end = tail.rfind(_END) == len(tail) - _END_SIZE and tail[-2:] == b"\0\0"  # no comment
        if end < 0 or tail.count(_END) != 1 or not at_end:
            raise ValueError(
                f"{file} is corrupt or truncated, or an ambiguous zip (no end record at its end, "
                "or more than one): refused"
            )
        # (this disk, the directory's disk, entries here, entries, directory size, offset)
        fields = struct.unpack("<4HLL", tail[-18:-2])
        directory_end = end
        if end >= _END64_SIZE + _LOCATOR_SIZE and read(end - _LOCATOR_SIZE, 4) == _LOCATOR:
            directory_end = end - _LOCATOR_SIZE - _END64_SIZE
            _, _, located, disks = struct.unpack("<4sLQL", read(end - _LOCATOR_SIZE, 20))
            sig, length, _, _, *fields64 = struct.unpack(
                "<4sQ2H2L4Q", read(directory_end, _END64_SIZE)
            )
            unset = (0xFFFF,) * 4 + (0xFFFFFFFF,) * 2
            if (sig, length, located, disks) != (_END64, 44, directory_end, 1) or not all(
                value in (value64, top)
                for value, value64, top in zip(fields, fields64, unset, strict=True)
            ):
                raise ValueError(
                    f"{file}: an ambiguous zip directory (a zip64 end record that is not right "
                    "before its locator, or disagrees with the end record): refused"
                )
            fields = tuple(fields64)
        disk, start_disk, here, count, dir_size, dir_offset = fields
        if (disk, start_disk, here) != (0, 0, count) or dir_offset + dir_size != directory_end:
            raise ValueError(
                f"{file}: an ambiguous zip directory (its central directory does not end where "
                "its end record begins): refused"
            )
        try:  # it is the directory miniz reads: now Python's reader parses its entries
            records = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as err:
            raise ValueError(f"{file} is corrupt or truncated (not a zip: {err})") from None
        names = [r.filename for r in records]
        if len(records) != count or len(set(names)) != len(names):
            raise ValueError(
                f"{file}: an ambiguous zip directory ({len(records)} entries, or repeated names, "
                f"where its end record counts {count}): refused"
            )
        for record in records:
            local = read(record.header_offset, _LOCAL_SIZE)
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            data_end = record.header_offset + _LOCAL_SIZE + name_length + extra_length
            if local[:4] != _LOCAL or data_end + record.compress_size > dir_offset:
                raise ValueError(
                    f"{file}: an ambiguous zip directory (record {record.filename!r} is not a "
                    "local record before the central directory): refused"
                )
    return records
