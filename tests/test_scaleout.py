"""Scale-out without Ray: --shard K/N + merge, several Triton endpoints (client.serving.endpoints)."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

import pytest

from client.batch import main as batch_main
from client.core.errors import ConfigError
from client.pipeline.screen import ScreenConfig, screen_scan
from client.pipeline.segmenters import TritonSegmenter
from client.reading.discover import ScanSource, discover
from client.scaleout.merge import main as merge_main
from client.scaleout.shard import apply_to_discovery, parse_shard, select, shard_of
from client.serving.endpoints import EndpointPool, read_url_file

from .scaleout_data import comparable, make_archive, rows


@pytest.fixture(scope="module")
def archive(tmp_path_factory, shared_data):
    return make_archive(tmp_path_factory.mktemp("scaleout"), shared_data, n=5)


# --- shards -----------------------------------------------------------------------------
def _reference_shard(key: str, n: int) -> int:
    """Independent statement of the documented rule: 1 + first 8 bytes of SHA-256 mod N."""
    return 1 + int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % n


def test_shards_are_a_disjoint_cover_stable_under_reorder_and_added_files():
    srcs = [ScanSource(f"c{i}", Path(f"/archive/p{i:03d}/ct.nii.gz"), "image") for i in range(60)]
    n = 3
    parts = [select(srcs, k, n) for k in range(1, n + 1)]
    keys = [[s.key for s in p] for p in parts]
    assert sorted(k for p in keys for k in p) == sorted(s.key for s in srcs)  # cover
    assert sum(map(len, keys)) == len(srcs)  # disjoint
    for k, p in enumerate(parts, 1):
        assert all(_reference_shard(s.key, n) == k for s in p)
        assert len(p) >= 8  # a hash split is roughly even (expected 20 each)
    shuffled = srcs[:]
    random.Random(1).shuffle(shuffled)
    more = shuffled + [
        ScanSource(f"n{i}", Path(f"/archive/new{i}.nii.gz"), "image") for i in range(30)
    ]
    for k in range(1, n + 1):
        again = {s.key for s in select(more, k, n)}
        assert set(keys[k - 1]) <= again  # old scans stay in their shard
        assert again - set(keys[k - 1]) <= {s.key for s in more[60:]}


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1/0", "a/b", "1-2", ""])
def test_bad_shard_specs_are_refused(bad):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(bad)


def test_shard_of_a_real_discovery(archive):
    scans, _ = archive
    found = discover([str(scans)])
    n_all = len(found.sources)
    parts = [apply_to_discovery(discover([str(scans)]), f"{k}/2").sources for k in (1, 2)]
    assert sorted(s.case_id for p in parts for s in p) == sorted(s.case_id for s in found.sources)
    assert n_all == 5  # (which shard gets work depends on the temporary folder's path)


def test_url_file_and_repeated_url(tmp_path):
    from client.batch import build_parser

    f = tmp_path / "servers.txt"
    f.write_text("# GPU servers\ngpu-a:8001\n\n gpu-b:8001  # second\n")
    assert read_url_file(f) == ["gpu-a:8001", "gpu-b:8001"]
    args = build_parser().parse_args(["x", "-o", "o", "--url", "h:1", "--url-file", str(f)])
    assert args.url == ["h:1", "gpu-a:8001", "gpu-b:8001"]
    f.write_text("gpu-a:8001\nhttp://gpu-b:8000\n")
    with pytest.raises(ConfigError, match=r"servers.txt line 2"):
        read_url_file(f)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["x", "-o", "o", "--url", "nohostport"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "extra", [["--ray", "local", "--ray-workers", "0"], ["--ray", "somewhere"], ["--shard", "3/2"]]
)
def test_scaleout_usage_errors_exit_2_before_out_is_touched(extra, tmp_path, archive):
    with pytest.raises(SystemExit) as e:
        batch_main([str(archive[0]), "-o", str(tmp_path / "out"), "--quiet", *extra])
    assert e.value.code == 2 and not (tmp_path / "out").exists()


def test_ray_missing_is_a_usage_error_naming_the_extra(tmp_path, archive, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SystemExit) as e:
        batch_main([str(archive[0]), "-o", str(tmp_path / "out"), "--ray", "local"])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    assert "pip install 'hepascreen[ray]'" in capsys.readouterr().err


# --- shards + merge (label maps given: no server) --------------------------------------------
def _screen(scans, masks, out, *extra) -> int:
    return batch_main([str(scans), "-o", str(out), "--masks", str(masks), "--quiet", *extra])


def test_shards_merged_equal_the_full_run(archive, tmp_path, capsys):
    scans, masks = archive
    assert _screen(scans, masks, tmp_path / "full") == 0
    assert _screen(scans, masks, tmp_path / "s1", "--shard", "1/2") == 0
    assert _screen(scans, masks, tmp_path / "s2", "--shard", "2/2") == 0
    n1, n2 = len(rows(tmp_path / "s1")), len(rows(tmp_path / "s2"))
    assert n1 + n2 == 5  # one of them may be empty: that shard still exits 0 and merges
    from client.cli.hepascreen import main as hepascreen

    rc = hepascreen(
        ["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "-o", str(tmp_path / "m")]
    )
    assert rc == 0
    merged, full = comparable(tmp_path / "m"), comparable(tmp_path / "full")
    assert merged == full  # every column of every row, timings and run ids aside
    assert len(rows(tmp_path / "m")) == 5  # exactly one row per case_id
    csv_lines = (tmp_path / "m" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("case_id,")
    m = json.loads((tmp_path / "m" / "run.json").read_text(encoding="utf-8"))
    assert m["status"] == "finished" and m["n_processed"] == 5 and m["conflicts"] == []
    assert sorted(s["shard"] for s in m["merged_from"]) == ["1/2", "2/2"]
    assert m["n_ok"] + m["n_flagged"] == 5
    assert sorted(p.name for p in (tmp_path / "m" / "qc").iterdir()) == [
        f"case{i}.png" for i in range(5)
    ]
    html = (tmp_path / "m" / "report.html").read_text(encoding="utf-8")
    assert all(f"case{i}" in html for i in range(5))


def test_merge_conflict_latest_wins_and_is_reported(archive, tmp_path, capsys):
    scans, masks = archive
    one = scans / "case1.nii.gz"
    assert _screen(one, masks, tmp_path / "a") == 0
    assert _screen(one, masks, tmp_path / "b", "--cubes", "50") == 0  # later, other result
    capsys.readouterr()
    rc = merge_main([str(tmp_path / "b"), str(tmp_path / "a"), "-o", str(tmp_path / "m")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "conflict: case1" in err and "different results" in err
    (kept,) = rows(tmp_path / "m")
    assert kept == rows(tmp_path / "b")[0]  # the latest attempt, whatever the order named
    dropped = [
        json.loads(x)
        for x in (tmp_path / "m" / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert dropped == rows(tmp_path / "a")
    m = json.loads((tmp_path / "m" / "run.json").read_text(encoding="utf-8"))
    assert m["conflicts"][0]["same_source"] is True and m["conflicts"][0]["kept"].endswith("b")
    # MERGED must be new or empty; an OUT without results is refused
    assert merge_main([str(tmp_path / "a"), "-o", str(tmp_path / "m")]) == 2
    assert merge_main([str(tmp_path), "-o", str(tmp_path / "m2")]) == 2


# --- several Triton endpoints ----------------------------------------------------------------
@pytest.fixture(scope="module")
def two_servers():
    from client.serving.server import EmbeddedServer

    with EmbeddedServer() as a, EmbeddedServer() as b:
        yield a, b


@pytest.mark.server
@pytest.mark.slow
def test_endpoint_stopped_mid_run_screen_completes_on_the_other_and_it_comes_back(
    archive, two_servers
):
    scans, _ = archive
    a, b = two_servers
    files = sorted(scans.iterdir())
    with TritonSegmenter.connect([b.grpc_url], max_in_flight=2) as single:  # one server
        want = {f.name: screen_scan(f, single).row for f in files}
    config = ScreenConfig()
    seg = TritonSegmenter.connect([a.grpc_url, b.grpc_url], max_in_flight=2, probe_interval_s=0.5)
    pool = seg.transport
    assert isinstance(pool, EndpointPool)
    try:
        got = {}
        for f in files[:2]:  # sequential: least outstanding alternates the endpoints
            got[f.name] = screen_scan(f, seg, config).row
        assert [e.requests for e in pool.endpoints] == [1, 1]
        a.stop()  # endpoint A goes away mid-run
        for f in files[2:]:
            got[f.name] = screen_scan(f, seg, config).row
        assert all(r["status"] != "error" for r in got.values()), [r["error"] for r in got.values()]
        for name, r in got.items():
            assert r["ratio"] == want[name]["ratio"] and r["grade"] == want[name]["grade"]
        st = pool.statistics()
        assert st["endpoints"][0]["healthy"] is False and st["endpoints"][0]["requests"] == 1
        assert st["endpoints"][1]["requests"] == len(files) - 1
        assert any("taken out" in e["event"] for e in st["events"])
        a.start()  # same ports: the prober puts it back
        for _ in range(40):
            if a.grpc_url in pool.healthy_urls():
                break
            time.sleep(0.5)
        assert pool.healthy_urls() == [a.grpc_url, b.grpc_url]
        before = pool.endpoints[0].requests
        screen_scan(files[0], seg, config)
        assert pool.endpoints[0].requests == before + 1  # A is used again
    finally:
        seg.close()
        a.start()  # leave the fixture's servers running for other tests


@pytest.mark.server
@pytest.mark.slow
def test_cli_with_two_urls_equals_one_url(archive, two_servers, tmp_path):
    scans, _ = archive
    a, b = two_servers
    a.start()
    assert (
        batch_main([str(scans), "-o", str(tmp_path / "one"), "--url", b.grpc_url, "--quiet"]) == 0
    )
    rc = batch_main([str(scans), "-o", str(tmp_path / "two"), "--quiet",
                     "--url", a.grpc_url, "--url", b.grpc_url])  # fmt: skip
    assert rc == 0
    assert comparable(tmp_path / "two") == comparable(tmp_path / "one")
    run = json.loads((tmp_path / "two" / "run.json").read_text(encoding="utf-8"))
    per = run["inference_statistics"]["endpoints"]
    assert [e["url"] for e in per] == [a.grpc_url, b.grpc_url]
    assert all(e["requests"] >= 1 for e in per) and sum(e["requests"] for e in per) == 5


def test_an_empty_shard_exits_0_with_an_empty_out_that_merges(archive, tmp_path):
    scans, masks = archive
    keys = [s.key for s in discover([str(scans)]).sources]
    n = 64  # 5 scans over 64 shards: most shards are empty
    empty = next(k for k in range(1, n + 1) if all(shard_of(key, n) != k for key in keys))
    full = next(k for k in range(1, n + 1) if any(shard_of(key, n) == k for key in keys))
    assert _screen(scans, masks, tmp_path / "e", "--shard", f"{empty}/{n}") == 0
    assert rows(tmp_path / "e") == []
    assert json.loads((tmp_path / "e" / "run.json").read_text(encoding="utf-8"))["status"] == (
        "finished"
    )
    assert _screen(scans, masks, tmp_path / "f", "--shard", f"{full}/{n}") == 0
    from client.cli.hepascreen import main as hepascreen

    out = tmp_path / "m"
    assert hepascreen(["merge", str(tmp_path / "e"), str(tmp_path / "f"), "-o", str(out)]) == 0
    assert len(rows(out)) == len(rows(tmp_path / "f")) >= 1
