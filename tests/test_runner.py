"""The dataset runner (``SmoothedClassifier.certify_dataset``): index selection, per-image
seeds, labels, and the crash-safe certification log with resume, shards and locking."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch

import peftsmoothing as ps
from peftsmoothing.report.certlog import LOG_COLUMNS, LogRow, parse_log
from tests.test_smoothing import SHAPE, images, random_linear


def strip_seconds(rows: list[LogRow] | tuple[LogRow, ...]) -> list[tuple[int | float, ...]]:
    return [r.certificate() for r in rows]


def log_rows(path: Path) -> list[LogRow]:
    rows, size = parse_log(path.read_bytes())
    assert size == path.stat().st_size
    return rows


# ------------------------------------------------------------------- per-image independence
def test_certificates_do_not_depend_on_other_images() -> None:
    data = images(8)
    smoothed = ps.SmoothedClassifier(random_linear(3), 2, sigma=1.0)
    full = smoothed.certify_dataset(data, 10, 200, 0.01, batch_size=64, seed=4)
    part = smoothed.certify_dataset(data, 10, 200, 0.01, batch_size=64, seed=4,
                                    indices=[6, 1, 3])
    skipped = smoothed.certify_dataset(data, 10, 200, 0.01, batch_size=64, seed=4, skip=3)
    by_idx = {r.idx: r.certificate() for r in full.rows}
    assert [r.idx for r in part.rows] == [6, 1, 3]
    assert [r.idx for r in skipped.rows] == [0, 3, 6]
    for row in (*part.rows, *skipped.rows):
        assert row.certificate() == by_idx[row.idx]
    other = smoothed.certify_dataset(data, 10, 200, 0.01, batch_size=64, seed=5)
    assert strip_seconds(other.rows) != strip_seconds(full.rows)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip": 0}, "skip"),
        ({"shard": (2, 2)}, "shard"),
        ({"shard": (0, 0)}, "shard"),
        ({"shard": 3}, "shard"),
        ({"indices": [0, 0]}, "duplicates"),
        ({"indices": [9]}, "out of range"),
        ({"seed": None}, "seed"),
    ],
)
def test_certify_dataset_validation(kwargs: dict[str, object], match: str) -> None:
    smoothed = ps.SmoothedClassifier(random_linear(), 2, 0.5)
    with pytest.raises(ValueError, match=match):
        smoothed.certify_dataset(images(4), 5, 10, **kwargs)  # type: ignore[arg-type]


def test_label_outside_classes_is_an_error() -> None:
    smoothed = ps.SmoothedClassifier(random_linear(), 2, 0.5)
    with pytest.raises(ValueError, match="outside"):
        smoothed.certify_dataset([(torch.rand(SHAPE), 5)], 5, 10)


# ------------------------------------------------------------------------ logs and resume
def run_dataset(log: Path | None, **kwargs: object) -> ps.CertificationReport:
    smoothed = ps.SmoothedClassifier(random_linear(4), 2, sigma=0.5)
    args: dict[str, object] = {"n0": 5, "n": 40, "alpha": 0.01, "batch_size": 40, "seed": 1}
    args.update(kwargs)
    return smoothed.certify_dataset(images(9), log=log, **args)  # type: ignore[arg-type]


def test_log_format(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    report = run_dataset(log)
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(LOG_COLUMNS)
    assert len(lines) == 10
    assert strip_seconds(log_rows(log)) == strip_seconds(report.rows)
    for row in report.rows:
        assert row.correct == int(row.predict == row.label)
    assert (tmp_path / "certify.tsv.json").is_file()


def test_existing_log_without_resume_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run_dataset(log, indices=[0])
    with pytest.raises(FileExistsError, match="resume=True"):
        run_dataset(log, resume=False)


def test_resume_with_other_settings_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run_dataset(log, indices=[0])
    with pytest.raises(ValueError, match="other settings or another model: n="):
        run_dataset(log, n=41)
    with pytest.raises(ValueError, match="seed="):
        run_dataset(log, seed=2)


def test_resume_with_another_model_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run_dataset(log, indices=[0])
    other = ps.SmoothedClassifier(random_linear(5), 2, sigma=0.5)
    with pytest.raises(ValueError, match="model_sha256="):
        other.certify_dataset(images(9), n0=5, n=40, alpha=0.01, batch_size=40, seed=1, log=log)
    run_dataset(log)  # the same model resumes


def test_resume_after_a_crash_at_every_byte(tmp_path: Path) -> None:
    """Cut the log at every byte (a kill at any moment): resuming never duplicates or loses a
    row, and re-certified rows are identical to the uninterrupted run's."""
    full_log = tmp_path / "full.tsv"
    reference = strip_seconds(run_dataset(full_log).rows)
    data = full_log.read_bytes()
    meta = (tmp_path / "full.tsv.json").read_bytes()
    for cut in range(0, len(data) + 1, 4):
        log = tmp_path / f"cut{cut}.tsv"
        log.write_bytes(data[:cut])
        (tmp_path / f"cut{cut}.tsv.json").write_bytes(meta)
        torn = cut not in (0, len(data)) and data[cut - 1 : cut] != b"\n"
        with pytest.warns(UserWarning, match="torn") if torn else contextlib.nullcontext():
            report = run_dataset(log)
        assert strip_seconds(report.rows) == reference
        assert strip_seconds(log_rows(log)) == reference, cut


def test_resume_after_an_exception(tmp_path: Path) -> None:
    class Failing:
        def __init__(self, fail_at: int | None) -> None:
            self.items, self.fail_at = images(9), fail_at

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            if i == self.fail_at:
                raise KeyboardInterrupt
            return self.items[i]

    smoothed = ps.SmoothedClassifier(random_linear(4), 2, sigma=0.5)
    log = tmp_path / "certify.tsv"
    with pytest.raises(KeyboardInterrupt):
        smoothed.certify_dataset(Failing(5), 5, 40, 0.01, 40, log=log, seed=1)
    assert [r.idx for r in log_rows(log)] == [0, 1, 2, 3, 4]
    resumed = smoothed.certify_dataset(Failing(None), 5, 40, 0.01, 40, log=log, seed=1)
    assert [r.idx for r in log_rows(log)] == list(range(9))
    assert strip_seconds(resumed.rows) == strip_seconds(run_dataset(None).rows)


def test_a_corrupted_middle_line_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run_dataset(log, indices=[0, 1, 2])
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = "garbage\n"
    log.write_text("".join(lines))
    with pytest.raises(ValueError, match="line 3 is malformed"):
        run_dataset(log)


def test_shards_are_disjoint_and_their_union_is_the_full_run(tmp_path: Path) -> None:
    full = run_dataset(None, skip=2)
    logs = [tmp_path / f"shard{i}.tsv" for i in range(3)]
    parts = [run_dataset(logs[i], skip=2, shard=(i, 3)) for i in range(3)]
    indices = [set(p.idx.tolist()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(indices) for b in indices[i + 1 :])
    merged = ps.CertificationReport.from_logs(logs)
    assert sorted(strip_seconds(merged.rows)) == sorted(strip_seconds(full.rows))
    assert merged.certified_accuracy([0.0, 0.5]) == full.certified_accuracy([0.0, 0.5])
    assert math.isclose(merged.acr, full.acr)


def test_two_processes_cannot_append_to_one_log(tmp_path: Path) -> None:
    from peftsmoothing.report.certlog import lock_log

    log = tmp_path / "certify.tsv"
    held = lock_log(log)  # stands in for another process certifying into the same log
    if held is None:
        pytest.skip("no fcntl on this platform")
    try:
        with pytest.raises(RuntimeError, match="another process is certifying into"):
            run_dataset(log)
    finally:
        held.close()
    assert len(run_dataset(log)) == 9  # free again once the other one is done
