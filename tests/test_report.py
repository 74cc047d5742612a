"""CertificationReport: numbers worked out by hand on a hand-written log."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

import peftsmoothing as ps
from peftsmoothing.certify.smoothing import LogRow
from peftsmoothing.report.accuracy import certified_accuracy_table
from peftsmoothing.report.certlog import LOG_COLUMNS_V1

HEADER = "\t".join(LOG_COLUMNS_V1) + "\n"  # format 1: still read
# idx label predict radius correct pa_lower count n seconds
ROWS = [
    "0\t3\t3\t0.9\t1\t0.9\t990\t1000\t1.5",  # correct, radius 0.9
    "1\t1\t1\t0.3\t1\t0.7\t720\t1000\t1.5",  # correct, radius 0.3
    "2\t0\t-1\t0.0\t0\t0.4\t410\t1000\t1.5",  # abstain
    "3\t2\t5\t0.6\t0\t0.8\t820\t1000\t1.5",  # wrong, radius 0.6 (must not count)
    "4\t4\t4\t0.0\t1\t0.5\t520\t1000\t1.5",  # correct, radius exactly 0
]


def write_log(path: Path, rows: list[str], tail: str = "") -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows) + tail)
    return path


@pytest.fixture
def report(tmp_path: Path) -> ps.CertificationReport:
    return ps.CertificationReport.from_log(write_log(tmp_path / "lora.tsv", ROWS))


def test_numbers_by_hand(report: ps.CertificationReport) -> None:
    assert len(report) == 5 and report.name == "lora"
    acc = report.certified_accuracy([0.0, 0.3, 0.31, 0.6, 0.9, 1.0])
    # correct radii: 0.9, 0.3, 0.0 out of 5 images
    assert acc == {0.0: 0.6, 0.3: 0.4, 0.31: 0.2, 0.6: 0.2, 0.9: 0.2, 1.0: 0.0}
    assert report.acr == pytest.approx((0.9 + 0.3 + 0.0) / 5)
    assert report.abstain_rate == pytest.approx(0.2)
    assert report.clean_accuracy == pytest.approx(0.6)
    assert report.certified_accuracy() == {0.0: 0.6, 0.25: 0.4, 0.5: 0.2, 0.75: 0.2, 1.0: 0.0}


def test_tables(report: ps.CertificationReport) -> None:
    assert report.table([0.0, 0.5]) == (
        "| | r = 0.0 | r = 0.5 | ACR | abstain | images |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| lora | 0.600 | 0.200 | 0.240 | 0.200 | 5 |"
    )
    assert report.table([0.0, 0.5], format="csv") == (
        "name,0.0,0.5,acr,abstain_rate,images\nlora,0.6,0.2,0.24,0.2,5"
    )
    assert "ACR: 0.240" in report.summary()
    with pytest.raises(ValueError, match="format"):
        report.table(format="html")
    with pytest.raises(ValueError, match="radii"):
        report.certified_accuracy([-0.1])
    with pytest.raises(ValueError, match="radii"):
        report.certified_accuracy([float("inf")])


def test_curve(report: ps.CertificationReport) -> None:
    radii, acc = report.curve(max_radius=1.2, points=5)
    assert radii.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2])
    assert acc.tolist() == pytest.approx([0.6, 0.4, 0.2, 0.2, 0.0])


def test_merge_shards_and_deduplicate(tmp_path: Path) -> None:
    a = write_log(tmp_path / "a.tsv", ROWS[:3])
    b = write_log(tmp_path / "b.tsv", ROWS[2:])  # row 2 in both, identical but for seconds
    b.write_text(b.read_text().replace("0.4\t410\t1000\t1.5", "0.4\t410\t1000\t9.0"))
    merged = ps.CertificationReport.from_logs([a, b])
    assert merged.idx.tolist() == [0, 1, 2, 3, 4]
    assert merged.acr == pytest.approx(0.24)
    conflicting = write_log(tmp_path / "c.tsv", ["0\t3\t3\t5.0\t1\t0.99\t999\t1000\t1.5"])
    with pytest.warns(UserWarning, match="first one seen is kept"):
        first = ps.CertificationReport.from_logs([a, conflicting])
    assert first.radius[0] == 0.9  # never the better one
    with pytest.raises(ValueError, match="non-empty list"):
        ps.CertificationReport.from_logs([])


def test_torn_and_corrupted_logs(tmp_path: Path) -> None:
    torn = write_log(tmp_path / "torn.tsv", ROWS[:2], tail="2\t0\t-1\t0.")
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(ps.CertificationReport.from_log(torn)) == 2
    bad = write_log(tmp_path / "bad.tsv", [ROWS[0], "0\tx", ROWS[1]])
    with pytest.raises(ValueError, match="line 3 is malformed"):
        ps.CertificationReport.from_log(bad)
    other = tmp_path / "other.tsv"
    other.write_text("idx\tlabel\tpredict\tradius\tcorrect\tsecs\n0\t1\t1\t0.5\t1\t0:00:01\n")
    with pytest.raises(ValueError, match="not a certification log"):
        ps.CertificationReport.from_log(other)
    empty = ps.CertificationReport.from_log(write_log(tmp_path / "empty.tsv", []))
    with pytest.raises(ValueError, match="no certificates"):
        empty.certified_accuracy()


def test_rows_round_trip() -> None:
    row = LogRow(3, 1, 1, 0.1 + 0.2, 1, 1 / 3, 7, 10, 0.125)
    assert LogRow.from_line(row.to_line()) == row


def test_plots(report: ps.CertificationReport, tmp_path: Path) -> None:
    out = report.plot(tmp_path / "curve.png", title="sigma = 0.25")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = ps.CertificationReport(report.rows[:2], name="prompt")
    both = ps.plot_certified_accuracy({"lora": report, "prompt": other}, tmp_path / "c.pdf")
    assert both.read_bytes()[:4] == b"%PDF"
    assert "| prompt |" in certified_accuracy_table({"lora": report, "prompt": other})


def test_plot_without_matplotlib(
    report: ps.CertificationReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'peftsmoothing\[plot\]'"):
        report.plot(tmp_path / "curve.png")


def test_cohen_analysis_columns(tmp_path: Path) -> None:
    """Cohen et al.'s analyze.py reads the columns 'correct' and 'radius' by name."""
    import csv

    path = write_log(tmp_path / "log.tsv", ROWS)
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    cert_acc = sum(int(r["correct"]) and float(r["radius"]) >= 0.5 for r in rows) / len(rows)
    assert cert_acc == ps.CertificationReport.from_log(path).certified_accuracy([0.5])[0.5]


def _rows(correct_radius: list[tuple[int, float]], start: int = 0, label: int = 0) -> list[LogRow]:
    return [
        LogRow(start + i, label, label if c else ps.ABSTAIN, r, c, 0.9, 900, 1000, 1.0)
        for i, (c, r) in enumerate(correct_radius)
    ]


def test_compare_to_counts_discordant_pairs_by_hand() -> None:
    # image:        0          1          2          3          4
    a = _rows([(1, 0.9), (1, 0.3), (0, 0.0), (1, 0.6), (0, 0.0)])
    b = _rows([(1, 0.2), (0, 0.0), (1, 0.4), (1, 0.6), (0, 0.0)])
    diff = ps.CertificationReport(a).compare_to(ps.CertificationReport(b), [0.0, 0.3])
    at0, at03 = diff[0.0], diff[0.3]
    # r = 0: a certifies {0, 1, 3}, b {0, 2, 3}: one image each way
    assert (at0.better, at0.worse, at0.images) == (1, 1, 5)
    assert at0.difference == 0.0 and at0.p_value == 1.0
    # per-image differences (0, 1, -1, 0, 0): mean 0, sample std sqrt(0.5)
    assert at0.stderr == pytest.approx((0.5**0.5) / 5**0.5)
    # r = 0.3: a certifies {0, 1, 3}, b {2, 3}: a better on 0 and 1, worse on 2
    assert (at03.better, at03.worse) == (2, 1)
    assert at03.difference == pytest.approx(1 / 5)
    # exact McNemar: 2 of 3 discordant pairs one way, two-sided p = 1
    assert at03.p_value == pytest.approx(1.0)
    assert "+0.200" in str(at03)


def test_compare_to_uses_shared_images_and_exact_binomial_p() -> None:
    # a is right on 12 images b gets wrong; b has 3 images a does not hold.
    a = ps.CertificationReport(_rows([(1, 0.5)] * 12))
    b = ps.CertificationReport(_rows([(0, 0.0)] * 15))
    d = a.compare_to(b, [0.25])[0.25]
    assert d.images == 12 and d.better == 12 and d.worse == 0
    assert d.difference == 1.0 and d.stderr == 0.0
    assert d.p_value == pytest.approx(2 * 0.5**12)
    # the reverse comparison has the opposite sign and the same p-value
    r = b.compare_to(a, [0.25])[0.25]
    assert r.difference == -1.0 and r.p_value == pytest.approx(d.p_value)


def test_compare_to_refuses_reports_of_other_data() -> None:
    a = ps.CertificationReport(_rows([(1, 0.5)] * 3))
    with pytest.raises(ValueError, match="share no image"):
        a.compare_to(ps.CertificationReport(_rows([(1, 0.5)] * 3, start=10)))
    with pytest.raises(ValueError, match="different labels"):
        a.compare_to(ps.CertificationReport(_rows([(1, 0.5)] * 3, label=7)))
    with pytest.raises(ValueError, match="no certificates"):
        a.compare_to(ps.CertificationReport([]))


def test_report_plot_never_replaces_a_file_that_is_not_its_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --plot`` pointed at a user's image (issue 21.2): refused unless --overwrite."""
    pytest.importorskip("matplotlib")
    from peftsmoothing.cli import main

    log = write_log(tmp_path / "lora.tsv", ROWS)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n a user's photo")
    assert main(["report", str(log), "--plot", str(photo)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a plot written by peftsmoothing" in err
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n a user's photo"
    assert main(["report", str(log), "--plot", str(photo), "--overwrite"]) == 0
    ours = photo.read_bytes()
    assert ours[:8] == b"\x89PNG\r\n\x1a\n" and len(ours) > 1000
    assert main(["report", str(log), "--plot", str(photo), "--radii", "0.5"]) == 0  # its own
    for name in ("curve.pdf", "curve.svg"):  # a plot of the library, in other formats
        ps.CertificationReport.from_log(log).plot(tmp_path / name)
        assert main(["report", str(log), "--plot", str(tmp_path / name)]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


FULL_DISK_PLOT = r"""
import resource, signal, sys
import matplotlib.backends.backend_agg, matplotlib.figure, peftsmoothing.report.accuracy
from peftsmoothing.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is full from now on
sys.exit(main(["report", sys.argv[1], "--plot", sys.argv[2]]))
"""


def test_a_failing_plot_write_leaves_the_previous_plot_whole(tmp_path: Path) -> None:
    """The plot is written beside and renamed: a write that fails midway (here a full disk)
    leaves the previous plot as it was, and no temporary file."""
    pytest.importorskip("matplotlib")
    import subprocess

    log = write_log(tmp_path / "lora.tsv", ROWS)
    png = ps.CertificationReport.from_log(log).plot(tmp_path / "curve.png")
    before = png.read_bytes()
    assert len(before) > 4096
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_PLOT)
    out = subprocess.run([sys.executable, str(script), str(log), str(png)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "File too large" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "full.py", "lora.tsv"]


MARKER = b"peftsmoothing certified-accuracy plot"
#: Files of users that hold the plot's marker text, but not as the plot's metadata.
NOT_OUR_PLOTS = {
    "caption.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><!-- caption: ' + MARKER
    + b", hand-edited --></svg>\n",
    "title.svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><title>' + MARKER
    + b"</title></svg>\n",
    "comment.png": b"\x89PNG\r\n\x1a\n" + (len(b"Comment\0" + MARKER)).to_bytes(4, "big")
    + b"tEXtComment\0" + MARKER + b"\0\0\0\0",
    "raw.png": b"\x89PNG\r\n\x1a\n a user's photo, " + MARKER,
    "title.pdf": b"%PDF-1.4\n1 0 obj\n<< /Title (" + MARKER + b") /Creator (LaTeX) >>\nendobj\n"
    b"trailer\n<< /Info 1 0 R >>\n%%EOF\n",
    "body.pdf": b"%PDF-1.4\n% " + MARKER + b"\n%%EOF\n",
    "title.ps": b"%!PS-Adobe-3.0\n%%Title: " + MARKER + b"\n%%EndComments\n",
    "late.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%Creator: me\n%%EndComments\n%%Creator: " + MARKER
    + b"\n",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NOT_OUR_PLOTS))
def test_a_file_that_merely_contains_the_plot_marker_is_not_replaced(
    tmp_path: Path, name: str
) -> None:
    """The marker counts only as the metadata entry our plots write (red-team #5)."""
    from peftsmoothing.report.plots import is_own_plot

    path = tmp_path / name
    path.write_bytes(NOT_OUR_PLOTS[name])
    assert not is_own_plot(path)


def test_report_plot_keeps_a_users_svg_with_the_marker_in_a_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peftsmoothing.cli import main

    log = write_log(tmp_path / "lora.tsv", ROWS)
    mine = tmp_path / "mine.svg"
    mine.write_bytes(NOT_OUR_PLOTS["caption.svg"])
    assert main(["report", str(log), "--plot", str(mine)]) == 1
    assert "exists and is not a plot written by peftsmoothing" in capsys.readouterr().err
    assert mine.read_bytes() == NOT_OUR_PLOTS["caption.svg"]


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg", "ps", "eps"])
def test_our_plots_are_recognised_in_every_format(
    report: ps.CertificationReport, tmp_path: Path, suffix: str
) -> None:
    pytest.importorskip("matplotlib")
    from peftsmoothing.report.plots import is_own_plot

    with warnings.catch_warnings():  # PostScript has no transparency
        warnings.simplefilter("ignore")
        assert is_own_plot(report.plot(tmp_path / f"curve.{suffix}"))
