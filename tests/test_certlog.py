"""Certification log format 2 and its faults: links, other data, missing settings, format-1
logs, Cohen et al.'s logs (read and written), impossible rows and mixed merges.

Each test makes the fault or attack happen (docs/security.md, docs/certification.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.core.fingerprint import image_fingerprint
from peftsmoothing.report.certlog import (
    COHEN_COLUMNS,
    LOG_COLUMNS,
    LOG_COLUMNS_V1,
    lock_log,
    parse_log,
    validate_rows,
)
from tests.test_release_fixtures import CERTIFY, FIXTURES, SIGMA, certify_data, load_quietly
from tests.test_smoothing import images, random_linear

ARGS: dict[str, Any] = {"n0": 5, "n": 40, "alpha": 0.01, "batch_size": 40, "seed": 1}


def run(log: Path | None, data: Any = None, **kwargs: Any) -> ps.CertificationReport:
    smoothed = ps.SmoothedClassifier(random_linear(4), 2, sigma=0.5)
    args = {**ARGS, "progress": False, **kwargs}
    return smoothed.certify_dataset(images(6) if data is None else data, log=log, **args)


# ------------------------------------------------------------------------------ format 2
def test_format_2_rows_and_settings(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    report = run(log, dataset_info={"name": "toy", "split": "test"})
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(LOG_COLUMNS) and len(lines) == 7
    settings = json.loads((tmp_path / "certify.tsv.json").read_text())
    assert settings["format_version"] == 2 and settings["mode"] == "fixed"
    assert settings["columns"] == "peftsmoothing"
    assert settings["dataset"] == {"size": 6, "name": "toy", "split": "test"}
    for row, (image, label) in zip(report.rows, images(6), strict=True):
        assert row.alpha == 0.01 and row.image_sha256 == image_fingerprint(image, label)
    assert not (tmp_path / "certify.tsv.lock").exists()
    assert ps.CertificationReport.from_log(log).rows == report.rows


def test_resume_on_other_data_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log, indices=[0, 1, 2])
    other = images(6, seed=9)  # another dataset or split
    with pytest.raises(ValueError, match="image 0 is not the image"):
        run(log, other)
    resized = [(x * 0.5, y) for x, y in images(6)]  # other preprocessing
    with pytest.raises(ValueError, match="image 0 is not the image"):
        run(log, resized)
    relabelled = [(x, 1 - y) for x, y in images(6)]
    with pytest.raises(ValueError, match="image 0 is not the image"):
        run(log, relabelled)
    assert len(run(log)) == 6  # the same data resumes


def test_resume_with_other_dataset_info_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log, indices=[0], dataset_info={"split": "test"})
    with pytest.raises(ValueError, match=r"dataset\.split='test' \(now 'train'\)"):
        run(log, dataset_info={"split": "train"})


def test_rows_without_settings_are_refused(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log, indices=[0])
    (tmp_path / "certify.tsv.json").unlink()
    with pytest.raises(ValueError, match=r"settings file .*certify\.tsv\.json is missing"):
        run(log)


def test_a_header_only_log_takes_new_settings(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log, indices=[])
    assert len(log.read_text().splitlines()) == 1
    assert len(run(log, n=41)) == 6
    assert json.loads((tmp_path / "certify.tsv.json").read_text())["n"] == 41


# ------------------------------------------------------------------------------ links
def test_a_link_to_a_log_reaches_its_lock_and_its_settings(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log, indices=[0, 1])
    link = tmp_path / "link.tsv"
    link.symlink_to(log)
    held = lock_log(log)  # another process certifying into the log
    try:
        with pytest.raises(RuntimeError, match="another process is certifying into"):
            run(link)
    finally:
        held.close()
    held = lock_log(link)  # ... or into the link
    try:
        with pytest.raises(RuntimeError, match="another process is certifying into"):
            run(log)
    finally:
        held.close()
    with pytest.raises(ValueError, match="other settings or another model: n=40"):
        run(link, n=41)  # the link's settings are the log's
    assert not (tmp_path / "link.tsv.json").exists()
    assert len(run(link)) == 6
    assert [r.idx for r in parse_log(log.read_bytes())[0]] == list(range(6))
    assert not list(tmp_path.glob("*.lock"))


# ------------------------------------------------------------------------------ format 1
def test_a_format_1_log_resumes_in_format_1_with_a_warning(tmp_path: Path) -> None:
    for name in ("certify.tsv", "certify.tsv.json"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    log = tmp_path / "certify.tsv"
    data = [*certify_data(), (torch.rand(3, 32, 32, generator=torch.Generator()), 2)]
    smoothed = ps.SmoothedClassifier(load_quietly(FIXTURES / "model"), 10, sigma=SIGMA)
    with pytest.warns(UserWarning, match="format-1 log: the data identity"):
        report = smoothed.certify_dataset(data, log=log, progress=False, **CERTIFY)
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(LOG_COLUMNS_V1) and len(lines) == 6
    assert all(len(line.split("\t")) == 9 for line in lines)
    assert len(report) == 5
    assert "format_version" not in json.loads((tmp_path / "certify.tsv.json").read_text())
    with pytest.raises(ValueError, match="n0=10 \\(now 11\\)"):
        smoothed.certify_dataset(data, log=log, progress=False, **{**CERTIFY, "n0": 11})
    with pytest.raises(ValueError, match="format-1 log"):
        smoothed.certify_dataset(data, log=log, progress=False, log_format="cohen", **CERTIFY)


# ------------------------------------------------------------------------------ Cohen et al.
COHEN_FLOAT = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "".join(
    f"{i}\t{label}\t{pred}\t{radius}\t{int(pred == label)}\t{t}\n"
    for i, label, pred, radius, t in [
        (0, 3, 3, 0.812, 1.234),
        (20, 8, 8, 0.25, 1.301),
        (40, 1, -1, 0.0, 1.2),
        (60, 4, 2, 0.6, 1.25),
    ]
)
COHEN_TIMEDELTA = (
    COHEN_FLOAT.replace("1.234\n", "0:00:01.234000\n")
    .replace("1.301\n", "1 day, 2:03:04.500000\n")
    .replace("1.2\n", "0:00:01.200000\n")
    .replace("1.25\n", "0:00:01\n")
)


@pytest.mark.parametrize("text", [COHEN_FLOAT, COHEN_TIMEDELTA], ids=["float", "timedelta"])
def test_cohen_logs_are_read(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cohen.tsv"
    path.write_bytes(text.encode())
    report = ps.CertificationReport.from_log(path)
    assert report.idx.tolist() == [0, 20, 40, 60]
    assert report.n.tolist() == [0] * 4 and report.count.tolist() == [0] * 4
    assert all(r.alpha is None and r.image_sha256 is None for r in report.rows)
    if text is COHEN_TIMEDELTA:
        assert report.seconds.tolist() == [1.234, 93784.5, 1.2, 1.0]
    # their analyze.py: mean of correct & (radius >= r) over all rows
    expected = {r: sum(c and rad >= r for c, rad in [(1, 0.812), (1, 0.25), (0, 0), (0, 0.6)]) / 4
                for r in (0.0, 0.25, 0.5, 1.0)}  # fmt: skip
    assert report.certified_accuracy(list(expected)) == expected
    assert report.abstain_rate == 0.25
    assert main(["report", str(path), "--radii", "0", "0.5", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "cohen,0.5,0.25,0.2655,0.25,4"


def test_only_cohen_rows_may_lack_counts() -> None:
    from peftsmoothing.report.certlog import LogRow

    assert LogRow.from_line("0\t1\t1\t0.5\t1\t0.25").n == 0
    with pytest.raises(ValueError, match="inconsistent"):
        LogRow.from_line("0\t1\t1\t0.5\t1\tnan\t0\t0\t0.25")


def test_cohen_logs_are_written_and_resumed(tmp_path: Path) -> None:
    log = tmp_path / "cohen.tsv"
    first = run(log, indices=[0, 1, 2], log_format="cohen")
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(COHEN_COLUMNS) and len(lines) == 4
    for line, row in zip(lines[1:], first.rows, strict=True):
        cells = line.split("\t")
        assert cells[:5] == [str(row.idx), str(row.label), str(row.predict), repr(row.radius),
                             str(row.correct)]  # fmt: skip
        assert cells[5].startswith("0:00:0")  # str(datetime.timedelta)
    assert json.loads((tmp_path / "cohen.tsv.json").read_text())["columns"] == "cohen"
    with pytest.raises(ValueError, match="columns='cohen' \\(now 'peftsmoothing'\\)"):
        run(log)
    with pytest.raises(ValueError, match="seed=1 \\(now 2\\)"):
        run(log, log_format="cohen", seed=2)
    resumed = run(log, log_format="cohen")
    assert len(resumed) == 6 and len(log.read_text().splitlines()) == 7
    full = run(None)
    read = ps.CertificationReport.from_log(log)
    assert [(r.idx, r.predict, r.radius, r.correct) for r in read.rows] == [
        (r.idx, r.predict, r.radius, r.correct) for r in full.rows
    ]


# ------------------------------------------------------------------------------ report checks
def tamper(log: Path, line: int, column: str, value: str) -> None:
    lines = log.read_text().splitlines(keepends=True)
    cells = lines[line - 1].rstrip("\n").split("\t")
    cells[LOG_COLUMNS.index(column)] = value
    lines[line - 1] = "\t".join(cells) + "\n"
    log.write_text("".join(lines))


def certified_line(log: Path) -> int:
    """The line number of a non-abstaining row."""
    rows = parse_log(log.read_bytes())[0]
    return next(i for i, r in enumerate(rows, start=2) if r.predict != ps.ABSTAIN)


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("correct", "flip", r"correct must be int\(predict == label\)"),
        ("radius", "9.0", r"exceeds sigma \* Phi\^-1\(pa_lower\)"),
        ("pa_lower", "0.999", "not the Clopper-Pearson bound"),
        ("alpha", "0.5", "not the Clopper-Pearson bound"),
    ],
)
def test_impossible_rows_are_refused(tmp_path: Path, column: str, value: str, rule: str) -> None:
    log = tmp_path / "certify.tsv"
    run(log)
    line = certified_line(log)
    if value == "flip":
        row = parse_log(log.read_bytes())[0][line - 2]
        value = str(1 - row.correct)
    tamper(log, line, column, value)
    with pytest.raises(ValueError, match=rf"certify\.tsv, line {line}: .*{rule}"):
        ps.CertificationReport.from_log(log)
    assert len(ps.CertificationReport.from_log(log, validate=False)) == 6


def test_an_abstention_with_a_radius_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cohen.tsv"
    path.write_bytes(COHEN_FLOAT.replace("40\t1\t-1\t0.0", "40\t1\t-1\t0.5").encode())
    with pytest.raises(ValueError, match="line 4: an abstention"):
        ps.CertificationReport.from_log(path)


def test_merging_logs_of_other_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = (tmp_path / f"{name}.tsv" for name in "abc")
    run(a, shard=(0, 2))
    run(b, shard=(1, 2))
    run(c, shard=(1, 2), seed=2)
    assert len(ps.CertificationReport.from_logs([a, b])) == 6  # shards of one run
    with pytest.raises(ValueError, match="other settings than .*seed=1 \\(now 2\\)"):
        ps.CertificationReport.from_logs([a, c])
    assert len(ps.CertificationReport.from_logs([a, c], allow_mixed=True)) == 6
    assert main(["report", str(a), str(c)]) == 1
    assert "allow-mixed" in capsys.readouterr().err
    assert main(["report", str(a), str(c), "--allow-mixed"]) == 0
    assert main(["report", str(a), str(c), "--compare"]) == 0


# ------------------------------------------------------------------------------ CLI flags
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max", "-1", "max must be an integer >= 0, got -1"),
        ("--n0", "0", "n0 must be an integer >= 1, got 0"),
        ("--n", "x", "n must be a number, got 'x'"),
        ("--skip", "0", "skip must be an integer >= 1, got 0"),
        ("--batch", "0", "batch must be an integer >= 1, got 0"),
        ("--alpha", "1.5", "alpha must be a number in the open interval (0, 1), got 1.5"),
        ("--sigma", "0", "sigma must be"),
    ],
)
def test_numeric_flags_are_checked_up_front(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["certify", "--model", "m", "--root", "r", "--out", "o.tsv", "--sigma", "0.5"]
    with pytest.raises(SystemExit) as exc:
        main([*args, flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {message}" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_rows_consistent_with_themselves_but_not_with_the_settings_are_refused(
    tmp_path: Path,
) -> None:
    """A row may be a valid Clopper-Pearson bound at another alpha or n than the run used."""
    from peftsmoothing.core.stats import certified_radius, clopper_pearson_lower

    log = tmp_path / "certify.tsv"
    run(log)
    line = certified_line(log)
    row = parse_log(log.read_bytes())[0][line - 2]
    loose = clopper_pearson_lower(row.count, row.n, 0.4)  # a far looser alpha than the run's
    for column, value in (("alpha", "0.4"), ("pa_lower", repr(loose)),
                          ("radius", repr(certified_radius(0.5, loose)))):  # fmt: skip
        tamper(log, line, column, value)
    with pytest.raises(ValueError, match=r"is not a sample count and level the settings allow"):
        ps.CertificationReport.from_log(log)


def test_a_prediction_below_one_half_and_an_unknown_class_are_refused(tmp_path: Path) -> None:
    log = tmp_path / "certify.tsv"
    run(log)
    line = certified_line(log)
    tamper(log, line, "predict", "7")  # 2 classes in the settings
    tamper(log, line, "correct", "0")
    with pytest.raises(ValueError, match="outside the 2 classes"):
        ps.CertificationReport.from_log(log)
    run(tmp_path / "b.tsv")
    row = parse_log((tmp_path / "b.tsv").read_bytes())[0][line - 2]
    rows = [row.__class__(**{**row.__dict__, "pa_lower": 0.3, "radius": 0.0})]
    with pytest.raises(ValueError, match=r"needs pa_lower >= 0.5"):
        validate_rows(rows, "x")


# ------------------------------------------------------------------------------ temporaries
def test_opening_a_log_never_removes_what_the_library_did_not_write(tmp_path: Path) -> None:
    """Names of the old pattern ``.<name>.<digits>.<anything>.tmp`` are users' (issue 19.1)."""
    photos = tmp_path / ".photos.4999999.backup.tmp"  # a user's folder; no process 4999999
    photos.mkdir()
    (photos / "2019.jpg").write_bytes(b"jpeg")
    files = [
        tmp_path / ".thesis.4999999.draft.tmp",  # a user's file, digits of no live process
        tmp_path / ".notes.99999999999999999999.v2.tmp",  # digits that no pid can be
    ]
    for path in files:
        path.write_text("mine")
    assert len(run(tmp_path / "certify.tsv")) == 6
    assert (photos / "2019.jpg").read_bytes() == b"jpeg"
    assert [path.read_text() for path in files] == ["mine", "mine"]


def test_opening_a_log_removes_only_its_own_stale_settings_temporaries(tmp_path: Path) -> None:
    import os

    from peftsmoothing.core.files import temporary_prefix

    def temporary(name: str, pid: int) -> Path:
        return tmp_path / f"{temporary_prefix(name, pid=pid)}k2j3h4g5.tmp"

    stale = temporary("certify.tsv.json", 4999999)  # a killed run's half-written settings
    live = temporary("certify.tsv.json", os.getpid())  # a live process's
    other = temporary("model.pt", 4999999)  # another file's: not this log's to clean
    no_pid = temporary("certify.tsv.json", 2**31)  # a number no pid of ours can be
    folder = temporary("certify.tsv.json", 4999998)  # a folder: never removed
    link = temporary("certify.tsv.json", 4999997)  # a link: never followed nor removed
    for path in (stale, live, other, no_pid):
        path.write_text("{")
    folder.mkdir()
    (folder / "keep").write_text("mine")
    (tmp_path / "target").write_text("mine")
    link.symlink_to(tmp_path / "target")
    run(tmp_path / "certify.tsv")
    assert not stale.exists()
    assert live.exists() and other.exists() and no_pid.exists() and (folder / "keep").exists()
    assert link.is_symlink() and (tmp_path / "target").read_text() == "mine"


# ------------------------------------------------------------------------------ settings file
@pytest.mark.parametrize(
    "content",
    [b'{"method": "lora", "options": {"r": 8}}\n', b"not json", b'["a list"]'],
    ids=["other-json", "not-json", "list"],
)
def test_a_new_log_never_overwrites_a_file_that_is_not_its_settings(
    tmp_path: Path, content: bytes
) -> None:
    """``--out D/peftsmoothing`` beside a saved model's ``peftsmoothing.json`` (issue 21.3)."""
    theirs = tmp_path / "peftsmoothing.json"
    theirs.write_bytes(content)
    with pytest.raises(FileExistsError, match=r"peftsmoothing\.json exists and is not"):
        run(tmp_path / "peftsmoothing")
    assert theirs.read_bytes() == content
    assert not (tmp_path / "peftsmoothing").exists()  # the empty log it created is gone again
    theirs.unlink()
    theirs.mkdir()  # a folder is refused the same way
    with pytest.raises(FileExistsError, match="exists and is not"):
        run(tmp_path / "peftsmoothing")
    assert theirs.is_dir()


# ------------------------------------------------------------------------------ row checks
def test_impossible_format_1_rows_are_refused_with_a_settings_file(tmp_path: Path) -> None:
    """pa_lower=1 and radius=1000 fit no run of n=50 at alpha=0.001 (issue 19.7)."""
    for name in ("certify.tsv", "certify.tsv.json"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    log = tmp_path / "certify.tsv"
    assert len(ps.CertificationReport.from_log(log)) == 4  # the release's rows are fine
    lines = log.read_text().splitlines(keepends=True)
    cells = lines[3].split("\t")  # idx 2: count 50 of 50
    cells[LOG_COLUMNS.index("pa_lower")] = "1.0"
    cells[LOG_COLUMNS.index("radius")] = "1000.0"
    lines[3] = "\t".join(cells)
    log.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"certify\.tsv, line 4: pa_lower 1\.0 is not the "):
        ps.CertificationReport.from_log(log)
    lines[3] = lines[3].replace("\t50\t50\t", "\t50\t51\t")  # an n the settings do not have
    log.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"line 4: n=51 .*not a sample count"):
        ps.CertificationReport.from_log(log)


def test_impossible_cohen_rows_are_refused_with_a_settings_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No row of n=40 at alpha=0.01 and sigma 0.5 certifies beyond 0.5 * Phi^-1(0.01^(1/40))."""
    from peftsmoothing.core.stats import certified_radius

    log = tmp_path / "cohen.tsv"
    run(log, log_format="cohen")
    ps.CertificationReport.from_log(log)
    line = certified_line(log)
    lines = log.read_text().splitlines(keepends=True)
    cells = lines[line - 1].split("\t")
    best = certified_radius(0.5, 0.01 ** (1 / 40))  # every sample of the top class
    cells[COHEN_COLUMNS.index("radius")] = repr(best * 0.999)
    lines[line - 1] = "\t".join(cells)
    log.write_text("".join(lines))
    assert len(ps.CertificationReport.from_log(log)) == 6  # possible: kept
    cells[COHEN_COLUMNS.index("radius")] = "1000.0"
    lines[line - 1] = "\t".join(cells)
    log.write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"cohen\.tsv, line {line}: radius 1000\.0 exceeds"):
        ps.CertificationReport.from_log(log)
    assert main(["report", str(log)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "radius 1000.0 exceeds" in err


@pytest.mark.parametrize("column", ["idx", "label"])
def test_numbers_beyond_int64_are_a_one_line_error(
    tmp_path: Path, column: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A number that does not fit the report's int64 arrays is a bad row (issue 19.8)."""
    log = tmp_path / "certify.tsv"
    run(log)
    (tmp_path / "certify.tsv.json").unlink()  # no settings: nothing else bounds the numbers
    tamper(log, 2, column, str(2**63))
    assert main(["report", str(log)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2 is malformed" in err and "Traceback" not in err


@pytest.mark.parametrize("time", ["9" * 400 + " days, 0:00:01", "inf"], ids=["days", "inf"])
def test_a_cohen_time_beyond_range_is_a_one_line_error(
    tmp_path: Path, time: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cohen.tsv"
    lines = COHEN_FLOAT.splitlines(keepends=True)
    lines[1] = lines[1].rsplit("\t", 1)[0] + f"\t{time}\n"
    path.write_text("".join(lines))
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2 is malformed" in err


# ------------------------------------------------------------------------------ what a log is
NOT_A_LOG = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))  # a read without bound fails fast
from peftsmoothing.cli import main
from peftsmoothing.report.accuracy import CertificationReport
from peftsmoothing.report.certlog import log_settings, open_log
settings = log_settings(sigma=0.5, n0=10, n=100, alpha=0.001, seed=0, num_classes=10,
                        precision="fp32", model_sha256="0" * 64)
for read in (lambda: CertificationReport.from_log(sys.argv[1]),
             lambda: open_log(sys.argv[1], settings, resume=True)):
    try:
        read()
    except BaseException as err:
        print(type(err).__name__, str(err).replace("\n", " "))
sys.exit(main(["report", sys.argv[1]]))
"""


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder", "over 2 GiB"])
def test_a_log_that_is_not_a_regular_file_is_refused_before_it_is_read(
    tmp_path: Path, kind: str
) -> None:
    """A link to /dev/zero would be read without end, a FIFO would block, a sparse file of
    2 GiB would be read whole: each is refused before any read, in one line (red-team #2)."""
    import os
    import subprocess
    import sys

    log = tmp_path / "shard1.tsv"
    if kind == "dev-zero":
        log.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(log)
    elif kind == "folder":
        log.mkdir()
    else:
        with log.open("wb") as f:
            f.write(b"\t".join(c.encode() for c in LOG_COLUMNS) + b"\n")
            f.truncate(2**31 + 1)  # sparse: no disk used
    script = tmp_path / "read.py"
    script.write_text(NOT_A_LOG)
    out = subprocess.run([sys.executable, str(script), str(log)],
                         capture_output=True, text=True, timeout=20)  # fmt: skip
    message = "is larger than 2 GiB" if kind == "over 2 GiB" else "is not a regular file"
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ValueError") for line in lines), out
    assert all(message in line for line in lines), out
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and message in out.stderr
    assert not (tmp_path / "shard1.tsv.json").exists()


# ------------------------------------------------------------------------------ settings types
HONEST = {
    "format": "peftsmoothing-certify-log", "format_version": 2, "mode": "fixed",
    "columns": "peftsmoothing", "sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "seed": 0,
    "num_classes": 10, "precision": "fp32", "model_sha256": "0" * 64, "dataset": {"size": 100},
}  # fmt: skip
#: Rows no run of ``HONEST`` can write: a radius of 1000 (at most 0.616), pa_lower 0.99 from
#: one vote in 1000, label 99 of 10 classes, idx 100000 of 100 images.
IMPOSSIBLE = {
    "radius": "0\t1\t1\t1000.0\t1\t{cp!r}\t1000\t1000\t1.0\n",
    "pa": "0\t1\t1\t0.5\t1\t0.99\t1\t1000\t1.0\n",
    "label": "0\t99\t99\t0.1\t1\t{cp!r}\t1000\t1000\t1.0\n",
    "idx": "100000\t1\t1\t0.1\t1\t{cp!r}\t1000\t1000\t1.0\n",
}
SEQUENTIAL = {"mode": "target", "sequential": {"n_max": 1000, "looks": [1000],
                                               "look_alphas": [0.001], "radius": 0.1}}  # fmt: skip


def settings_log(tmp_path: Path, row: str, settings: str | dict[str, Any]) -> Path:
    from peftsmoothing.core.stats import clopper_pearson_lower

    log = tmp_path / "c.tsv"
    cp = clopper_pearson_lower(1000, 1000, 0.001)
    log.write_text("\t".join(LOG_COLUMNS_V1) + "\n" + IMPOSSIBLE[row].format(cp=cp))
    text = settings if isinstance(settings, str) else json.dumps(settings)
    (tmp_path / "c.tsv.json").write_text(text)
    return log


@pytest.mark.parametrize(
    ("row", "change", "message"),
    [
        ("radius", {"sigma": "0.25"}, "sigma must be a finite number above 0, got '0.25'"),
        ("radius", {"sigma": float("nan")}, "sigma must be a finite number above 0, got nan"),
        ("radius", {"sigma": [0.25]}, r"sigma must be a finite number above 0, got \[0.25\]"),
        ("radius", {"sigma": ...}, "sigma is missing"),
        ("pa", {"n": "1000"}, "n must be an integer of at least 1, got '1000'"),
        ("pa", {"n": 1000.0}, "n must be an integer of at least 1, got 1000.0"),
        ("pa", {"alpha": 1.5}, "alpha must be a number in"),
        ("pa", {"seed": True}, "seed must be an integer"),
        ("label", {"num_classes": "10"}, "num_classes must be an integer of at least 1"),
        ("idx", {"dataset": "100"}, "dataset must be a JSON object"),
        ("idx", {"dataset": {"size": 1e9}}, r"dataset\.size must be an integer"),
        ("radius", {**SEQUENTIAL, "sequential": {"looks": [float("inf")], "look_alphas": [0.001]}},
         r"sequential\.looks must be a list of integers of at least 1"),
        ("radius", {**SEQUENTIAL, "sequential": {"looks": None, "look_alphas": [0.001]}},
         r"sequential\.looks must be a list"),
        ("radius", {**SEQUENTIAL, "sequential": {"looks": [1000], "look_alphas": [{}]}},
         r"sequential\.look_alphas must be a list of numbers in \(0, 1\)"),
        ("radius", {**SEQUENTIAL, "sequential": {"looks": [1000], "look_alphas": []}},
         r"sequential\.look_alphas must have one entry per look"),
        ("radius", {"mode": "fixed", "sequential": "x"}, "sequential must be a JSON object"),
        ("radius", {"extra": [[[[[[[[[1]]]]]]]]]}, "nested more than 8 levels"),
    ],
)  # fmt: skip
def test_settings_of_the_wrong_types_are_refused(
    tmp_path: Path, row: str, change: dict[str, Any], message: str
) -> None:
    """Strings that read like numbers, or numbers of the wrong kind, would switch the row
    checks off (red-team #4): the settings file is refused, naming it and the key."""
    settings = {k: v for k, v in {**HONEST, **change}.items() if v is not ...}
    log = settings_log(tmp_path, row, settings)
    with pytest.raises(ValueError, match=rf"c\.tsv\.json: {message}"):
        ps.CertificationReport.from_log(log)


@pytest.mark.parametrize("row", sorted(IMPOSSIBLE))
def test_impossible_rows_are_refused_with_honest_settings(tmp_path: Path, row: str) -> None:
    message = {"radius": "exceeds", "pa": "not the Clopper-Pearson", "label": "outside the 10",
               "idx": "idx 100000 is outside the 100 images"}[row]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        ps.CertificationReport.from_log(settings_log(tmp_path, row, HONEST))


@pytest.mark.parametrize("settings", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000])
def test_deeply_nested_settings_are_a_one_line_error(
    tmp_path: Path, settings: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = settings_log(tmp_path, "radius", settings)
    assert main(["report", str(log)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c.tsv.json is not valid JSON (nested too deeply)" in err


def test_a_failed_open_removes_only_the_log_it_created(tmp_path: Path) -> None:
    """``missing/../keep.tsv`` reaches a user's existing empty file: a failing open must not
    take it for a log it created and remove it (red-team #7)."""
    from peftsmoothing.report.certlog import log_settings, open_log

    settings = log_settings(sigma=0.5, n0=10, n=100, alpha=0.001, seed=0, num_classes=10,
                            precision="fp32", model_sha256="0" * 64)  # fmt: skip
    keep = tmp_path / "keep.tsv"
    keep.write_bytes(b"")  # a user's placeholder
    (tmp_path / "keep.tsv.json").write_text('{"user": "config"}')  # makes the open fail
    with pytest.raises(FileExistsError, match="is not the settings file"):
        open_log(tmp_path / "missing" / ".." / "keep.tsv", settings, resume=True)
    assert keep.exists()
    (tmp_path / "new.tsv.json").write_text('{"user": "config"}')
    with pytest.raises(FileExistsError, match="is not the settings file"):
        open_log(tmp_path / "missing" / ".." / "new.tsv", settings, resume=True)
    assert not (tmp_path / "new.tsv").exists()  # the log it created is gone again


def test_a_deeply_nested_file_where_new_settings_go_is_kept_in_one_line(tmp_path: Path) -> None:
    from peftsmoothing.report.certlog import log_settings, open_log

    settings = log_settings(sigma=0.5, n0=10, n=100, alpha=0.001, seed=0, num_classes=10,
                            precision="fp32", model_sha256="0" * 64)  # fmt: skip
    theirs = tmp_path / "new.tsv.json"
    theirs.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileExistsError, match="is not the settings file"):
        open_log(tmp_path / "new.tsv", settings, resume=False)
    assert theirs.stat().st_size == 200_000 and not (tmp_path / "new.tsv").exists()
