"""report.html in a real headless browser (Debian's chromium): it renders, its rows equal
results.csv, filters/sorting/pagination set from the URL work, thumbnail links resolve."""

from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from client.outputs.report import write_report
from client.outputs.report_html import column_order

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about 2 s per chromium start


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_chromium.sh")],
        capture_output=True,
        encoding="utf-8",
        timeout=600,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip(
            "chromium is not installed and scripts/install_chromium.sh could not install it: "
            + (proc.stderr.strip()[-300:] or f"exit {proc.returncode}")
        )
    return proc.stdout.strip().splitlines()[-1]


def chromium_args(binary: str) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]


class _Table(HTMLParser):
    """Header columns, body rows (data-case, cell texts, img src) and body attributes."""

    def __init__(self):
        super().__init__()
        self.cols, self.rows, self.body_attrs = [], [], {}
        self._where = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body_attrs = a
        if tag in ("thead", "tbody") and a.get("id") in ("hs-head", "hs-body"):
            self._where = a["id"]
        elif self._where == "hs-head" and tag == "th" and "data-col" in a:
            self.cols.append(a["data-col"])
        elif self._where == "hs-body" and tag == "tr":
            self.rows.append({"case": a.get("data-case"), "cells": [], "img": None})
        elif self._where == "hs-body" and tag == "td" and a.get("class") != "qc":
            self._cell = []
        elif self._where == "hs-body" and tag == "img":
            self.rows[-1]["img"] = a.get("src")

    def handle_endtag(self, tag):
        if tag in ("thead", "tbody"):
            self._where = None
        elif tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _rows():
    rng = np.random.default_rng(0)
    ids = ["plain", "hash#1", "pct%20x", "space d", "ünï-日本", "a&b<c>", "q?x=1", "plus+1"]
    ids += [f"case_{k:03d}" for k in range(40)]
    grades = ("normal", "mild", "moderate", "severe")
    rows = []
    for k, cid in enumerate(ids):
        status = ("ok", "ok", "flagged", "error")[k % 4]
        r = {"case_id": cid, "source": f"/data/{cid}.nii.gz", "status": status}
        if status == "error":
            r.update(grade="indeterminate", error=f"{cid}: unreadable <file>")
        else:
            ratio = float(rng.uniform(0.3, 1.6))
            r.update(
                grade=grades[min(3, int((1.6 - ratio) / 0.33))] if k % 7 else "indeterminate",
                ratio=round(ratio, 4),
                ratio_ci_low=round(ratio - 0.03, 4),
                ratio_ci_high=round(ratio + 0.03, 4),
                liver_hu=round(float(rng.uniform(10, 70)), 2),
                spleen_hu=round(float(rng.uniform(30, 55)), 2),
                liver_volume_ml=round(float(rng.uniform(900, 2200)), 1),
                n_pairs=40000,
                flags="liver_cut_by_edge" if status == "flagged" else "",
                error="",
            )
        r["extra_unknown_column"] = f"x{k}"
        r["seconds"] = round(float(rng.uniform(0.5, 3)), 3)
        rows.append(r)
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    binary = _chromium()
    out = tmp_path_factory.mktemp("report")
    rows = _rows()
    (out / "qc").mkdir()
    thumb = Image.new("RGB", (40, 20), (200, 30, 30))
    for r in rows[:10]:
        thumb.save(out / "qc" / f"{r['case_id']}.png")
    cols = column_order(rows)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})
    path = write_report(rows, out)
    return binary, path, out


def _dump(report, fragment: str) -> _Table:
    binary, path, _ = report
    url = path.resolve().as_uri() + fragment
    proc = subprocess.run(
        [*chromium_args(binary), "--dump-dom", url],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    t = _Table()
    t.feed(proc.stdout)
    return t


def _csv(out):
    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same(cell: str, value: str) -> bool:
    if cell == value:
        return True
    try:
        a, b = float(cell), float(value)
    except ValueError:
        return False
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return math.isclose(a, b, abs_tol=0.5 * 10**-decimals + 1e-9)


def test_rows_equal_results_csv(report):
    t = _dump(report, "#size=all&cols=all")
    expected = _csv(report[2])
    assert t.body_attrs.get("data-rendered") == str(len(expected))
    assert set(t.cols) == set(expected[0])  # every CSV column, the unknown one included
    by_case = {r["case_id"]: r for r in expected}
    assert sorted(r["case"] for r in t.rows) == sorted(by_case)
    for row in t.rows:
        want = by_case[row["case"]]
        for col, cell in zip(t.cols, row["cells"]):
            assert _same(cell, want[col]), (row["case"], col, cell, want[col])


def test_filter_from_the_url(report):
    expected = _csv(report[2])
    t = _dump(report, "#grade=severe&size=all")
    assert sorted(r["case"] for r in t.rows) == sorted(
        r["case_id"] for r in expected if r["grade"] == "severe"
    )
    t = _dump(report, "#review=1&size=all")
    assert sorted(r["case"] for r in t.rows) == sorted(
        r["case_id"]
        for r in expected
        if r["status"] != "ok" or r["grade"] == "indeterminate" or r["flags"]
    )
    t = _dump(report, "#q=" + "%23")  # text search for "#"
    assert [r["case"] for r in t.rows] == ["hash#1"]


def test_sorting_and_pages_from_the_url(report):
    t = _dump(report, "#sort=ratio&desc=1&size=all")
    i = t.cols.index("ratio")
    values = [r["cells"][i] for r in t.rows]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=True)
    assert all(not v for v in values[len(numbers) :])  # empty ratios last
    all_rows = [r["case"] for r in _dump(report, "#size=all").rows]
    page2 = _dump(report, "#size=10&page=2")
    assert page2.body_attrs.get("data-rendered") == "10"
    assert [r["case"] for r in page2.rows] == all_rows[10:20]
    # Default order: errors first, then indeterminate, then flagged.
    first = {r["case_id"]: r for r in _csv(report[2])}[all_rows[0]]
    assert first["status"] == "error"


def test_thumbnails_are_lazy_and_their_links_resolve(report):
    t = _dump(report, "#size=all")
    out = report[2]
    with_img = [r for r in t.rows if r["img"]]
    assert len(with_img) == 10
    for r in with_img:
        assert (out / unquote(r["img"])).is_file(), r["img"]
        assert unquote(r["img"]) == f"qc/{r['case']}.png"
    html = report[1].read_text(encoding="utf-8")
    assert 'loading="lazy"' in html
    # Offline: no network asset (an SVG namespace URI is a name, not a fetch).
    assert not re.search(
        r"""(src|href)\s*=\s*["']?\s*(https?:|//)|url\(\s*["']?(https?:|//)|@import""", html
    )


def test_screenshot_renders_the_page(report, tmp_path):
    binary, path, _ = report
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [*chromium_args(binary), "--window-size=1200,900", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB"))
    assert a.shape[:2] == (900, 1200)
    assert (a.std(axis=(0, 1)) > 10).all()  # not a blank page


def test_a_real_batch_report_equals_its_results_csv(tmp_path, shared_data):
    """End to end: the batch CLI (--masks) writes results.csv, QC pictures and report.html;
    in chromium the table equals results.csv and every QC link resolves."""
    from client.batch import main as batch_main

    binary = _chromium()
    d = shared_data / "totalseg_example"
    scans, masks, out = tmp_path / "scans", tmp_path / "masks", tmp_path / "out"
    scans.mkdir()
    masks.mkdir()
    for name in ("case #1", "100% fat", "ünï 日本", "plain"):
        shutil.copyfile(d / "ct_small.nii.gz", scans / f"{name}.nii.gz")
        shutil.copyfile(d / "labels_small.nii.gz", masks / f"{name}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not an image\n")
    assert batch_main([str(scans), "-o", str(out), "--masks", str(masks), "--quiet"]) == 1
    rep = (binary, out / "report.html", out)
    t = _dump(rep, "#size=all&cols=all")
    expected = _csv(out)
    by_case = {r["case_id"]: r for r in expected}
    assert sorted(r["case"] for r in t.rows) == sorted(by_case) and len(by_case) == 5
    assert set(t.cols) == set(expected[0])
    for row in t.rows:
        for col, cell in zip(t.cols, row["cells"]):
            assert _same(cell, by_case[row["case"]][col]), (row["case"], col, cell)
    imgs = {r["case"]: r["img"] for r in t.rows}
    assert imgs["broken"] is None
    for case in ("case #1", "100% fat", "ünï 日本", "plain"):
        assert (out / unquote(imgs[case])).is_file(), imgs[case]
