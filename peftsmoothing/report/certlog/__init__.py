"""The certification log: one tab-separated row per certified image, and its settings file.

A log is written by ``peftsmoothing.certify.runner.certify_dataset`` and read by
[`CertificationReport`][peftsmoothing.CertificationReport]. It is append-only and crash-safe
(docs/design.md, "Formats"; docs/certification.md, "The log"):

- ``<log>`` holds one header line and one ``LogRow`` per image, each row flushed and
  fsynced as it is written. A process killed mid-write leaves at most a torn last line, which
  ``parse_log`` recognises and resuming truncates.
- ``<log>.json`` (next to the log's resolved path) holds the settings the rows were certified
  with (``log_settings``); resuming with other settings, another model or other data is
  refused (``open_log``).
- The process appending to a log holds an exclusive ``flock`` on the log file itself, so a
  second process, also through a symbolic link, is refused.

Three layouts are read (``parse_log``): format 2 (``LOG_COLUMNS``, written now),
format 1 (``LOG_COLUMNS_V1``, release 0.1: still read and resumed in its own format) and
Cohen et al.'s (``COHEN_COLUMNS``, locuslab/smoothing), which is also written on request.
Changing a layout is a versioned change, not a refactoring.
"""


from .resume import OpenLog, check_identity, open_log
from .resume import lock_log as lock_log  # tests stand in for another process with it
from .rows import (
    COHEN_COLUMNS,
    LOG_COLUMNS,
    LOG_COLUMNS_V1,
    MAX_LOG_BYTES,
    LogRow,
    parse_log,
    read_log,
    validate_rows,
)
from .settings import (
    FORMAT_VERSION,
    LOG_FORMATS,
    check_same_settings,
    log_settings,
    read_settings,
    settings_diff,
    settings_path,
)

__all__ = [
    "COHEN_COLUMNS",
    "FORMAT_VERSION",
    "LOG_COLUMNS",
    "LOG_COLUMNS_V1",
    "LOG_FORMATS",
    "MAX_LOG_BYTES",
    "LogRow",
    "OpenLog",
    "check_identity",
    "check_same_settings",
    "log_settings",
    "open_log",
    "parse_log",
    "read_log",
    "read_settings",
    "settings_diff",
    "settings_path",
    "validate_rows",
]
