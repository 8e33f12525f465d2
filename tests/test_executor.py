"""One executor interface (client.scaleout.executor): the thread pool and Ray actors take
the sources, one row callback and ``more`` (the rounds of ``--series best``), and give
the same rows (``--masks`` mode: no server)."""

from __future__ import annotations

import inspect
import threading

import pytest

from client import MaskFolderSegmenter, ScreenConfig  # the library API (stable)
from client.reading.discover import discover
from client.scaleout.executor import Executor, RayExecutor, RayOptions, ThreadExecutor

from .scaleout_data import RUN_LEVEL, make_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory, shared_data):
    scans, masks = make_archive(tmp_path_factory.mktemp("executor"), shared_data, n=5)
    return discover([str(scans)]).sources, MaskFolderSegmenter(masks, "default")


def _rounds(sources, sizes):
    """``(first, more, calls)``: ``sources`` cut into rounds of ``sizes``; ``more()``
    gives the next one (then ``[]``), and ``calls`` records when it was asked."""
    cuts, i = [], 0
    for n in sizes:
        cuts.append(list(sources[i : i + n]))
        i += n
    calls: list = []

    def more():
        calls.append(True)
        return cuts.pop(0) if cuts else []

    return more(), more, calls


def _comparable(rows: dict) -> dict:
    return {
        c: {k: v for k, v in r.items() if k not in RUN_LEVEL and not k.startswith("seconds")}
        for c, r in rows.items()
    }


def test_both_executors_satisfy_the_one_interface(archive):
    _, seg = archive
    config = ScreenConfig(out_dir=None)
    want = inspect.signature(Executor.run)
    for ex in (ThreadExecutor(seg, config), RayExecutor(seg, config, RayOptions("local"))):
        assert isinstance(ex, Executor)
        assert inspect.signature(type(ex).run) == want
    # Explicit options, never the parsed command line nor an out-list.
    for cls in (ThreadExecutor, RayExecutor, RayOptions):
        params = set(inspect.signature(cls).parameters)
        assert not params & {"args", "written", "store", "manifest"}, cls


def test_threads_run_every_round_and_call_back_on_the_callers_thread(archive):
    sources, seg = archive
    first, more, calls = _rounds(sources, [2, 2, 1])
    got, seen_at_more, threads = [], [], set()

    def on_row(row):
        got.append(row["case_id"])
        threads.add(threading.get_ident())

    def counted_more():
        seen_at_more.append(len(got))  # asked only once the round's rows are all in
        return more()

    ThreadExecutor(seg, ScreenConfig(out_dir=None), concurrency=2).run(first, on_row, counted_more)
    assert sorted(got) == sorted(s.case_id for s in sources)  # each scan once
    assert seen_at_more == [2, 4, 5] and len(calls) == 4  # the last more() said stop
    assert threads == {threading.get_ident()}


def test_no_sources_runs_nothing(archive):
    _, seg = archive

    def no_rows(row):
        raise AssertionError("no scan, no row")

    def no_more():
        raise AssertionError("more() is asked only after a round")

    ThreadExecutor(None, ScreenConfig(out_dir=None)).run([], no_rows, no_more)
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'hepascreen[ray]'")
    was = ray.is_initialized()
    RayExecutor(None, ScreenConfig(out_dir=None), RayOptions("local")).run([], no_rows, no_more)
    assert ray.is_initialized() == was  # no Ray started for nothing


def test_thread_and_ray_executors_give_identical_rows(archive):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'hepascreen[ray]'")
    sources, seg = archive
    config = ScreenConfig(out_dir=None)
    by_threads, by_ray, infos = {}, {}, []

    first, more, _ = _rounds(sources, [3, 2])
    ThreadExecutor(seg, config, concurrency=2).run(
        first, lambda r: by_threads.setdefault(r["case_id"], r), more
    )
    first, more, calls = _rounds(sources, [3, 2])
    was = ray.is_initialized()
    options = RayOptions("local", workers=2, concurrency=2)
    RayExecutor(seg, config, options, on_info=infos.append).run(
        first, lambda r: by_ray.setdefault(r["case_id"], r), more
    )
    assert len(by_threads) == len(sources) == 5 and len(calls) == 3
    assert len({r["ratio"] for r in by_threads.values()}) == 5  # five different answers
    assert _comparable(by_ray) == _comparable(by_threads)
    info = infos[-1]  # what run.json "ray" records
    assert info["workers"] == 2 and len(info["worker_processes"]) == 2
    assert info["retried"] == [] and info["segmenter"]["kind"] == "masks"
    assert len(info["worker_statistics"]) == 2 and info["started_local"] != was
    assert ray.is_initialized() == was  # a Ray this run started is stopped after it
