"""Frame sources: video file, MJPEG over loopback HTTP (incl. stall -> reopen with back-off), image folder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fixtures_runtime import runtime_frame_number, runtime_numbered_frame
from infantino.runtime.sources import (SourceConfig, SourceError, backoff_delays, open_source, source_kind)


def test_source_kinds(tmp_path, runtime_video_file):
    assert source_kind(0) == source_kind("2") == source_kind("/dev/video1") == "camera"
    assert source_kind("http://127.0.0.1:8080/x.mjpg") == source_kind("rtsp://cam/stream") == "url"
    assert source_kind(tmp_path) == "folder" and source_kind(runtime_video_file[0]) == "file"
    with pytest.raises(SourceError, match="not a camera index, URL, existing video file or folder"):
        open_source(tmp_path / "missing.avi")


def test_video_file_delivers_every_frame_in_order(runtime_video_file):
    path, n = runtime_video_file
    with open_source(path) as src:
        frames = list(src)
    assert len(frames) == n and src.stats["frames"] == n
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert [runtime_frame_number(f) for f in frames] == list(range(n))


def test_video_file_loops_when_asked(runtime_video_file):
    path, n = runtime_video_file
    src = open_source(path, loop=True)
    got = []
    for f in src:
        got.append(runtime_frame_number(f))
        if len(got) == n + 3:
            src.close()
    assert got[:n] == list(range(n)) and got[n:] == [0, 1, 2]


def test_corrupt_video_file_is_refused(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF" + b"\0" * 100)
    with pytest.raises(SourceError, match="cannot open video file"):
        open_source(bad)


def test_image_folder_in_name_order_skipping_junk(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), runtime_numbered_frame(i))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    src = open_source(str(tmp_path))
    assert [runtime_frame_number(f) for f in src] == [0, 1, 2]
    assert src.stats["failures"] == 1  # broken.jpg, logged and skipped
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(empty)


def test_mjpeg_over_loopback_delivers_frames(runtime_mjpeg_server):
    srv = runtime_mjpeg_server()
    got = []
    with open_source(srv.url, stall_timeout=5, open_timeout=10, drop_old=False, queue_size=64) as src:
        for f in src:
            got.append(f)
            if len(got) == 10:
                break
    assert len(got) == 10 and got[0].shape == (120, 160, 3)
    nums = [runtime_frame_number(f) for f in got]
    assert nums == sorted(nums) and len(set(nums)) == 10


def test_stalled_stream_is_reopened_with_backoff(runtime_mjpeg_server):
    """The server sends 5 frames per connection, then goes silent: the source notices the stall and reconnects."""
    srv = runtime_mjpeg_server(frames_per_connection=5, after="stall")
    got = []
    with open_source(srv.url, stall_timeout=1.0, open_timeout=5, backoff_initial=0.05, backoff_max=0.2,
                     drop_old=False, queue_size=16) as src:
        for f in src:
            got.append(runtime_frame_number(f))
            if len(got) == 12:
                break
    assert srv.connections >= 3 and src.stats["reopens"] >= 2
    assert len(got) == 12 and len(set(got)) == 12  # frames from several connections, none repeated
    assert all(d <= 0.2 for d in src.backoffs)


def test_closed_stream_is_reopened(runtime_mjpeg_server):
    srv = runtime_mjpeg_server(frames_per_connection=3, after="close")
    with open_source(srv.url, stall_timeout=2, backoff_initial=0.05, drop_old=False, queue_size=16) as src:
        n = 0
        for _ in src:
            n += 1
            if n == 7:
                break
    assert srv.connections >= 3 and src.stats["reopens"] >= 2


def test_unreachable_source_gives_up_after_bounded_exponential_backoff(runtime_free_port):
    url = f"http://127.0.0.1:{runtime_free_port}/none.mjpg"
    src = open_source(url, open_timeout=2, stall_timeout=1, backoff_initial=0.01, backoff_max=0.04, max_retries=4)
    with pytest.raises(SourceError, match="after 4 reopen attempt"):
        list(src)
    assert src.backoffs == [0.01, 0.02, 0.04, 0.04]
    assert backoff_delays(SourceConfig(spec=0), 7) == [0.5, 1, 2, 4, 8, 10, 10]


def test_source_config_is_typed():
    with pytest.raises(ValueError):
        open_source(0, stall_timout=1)
    with pytest.raises(ValueError):
        SourceConfig(spec=0, backoff_initial=-1)


def test_missing_camera_is_retried_then_reported():
    """No /dev/video63 here: V4L2 open fails, is retried with back-off, then SourceError names the source."""
    src = open_source(63, backoff_initial=0.01, backoff_max=0.02, max_retries=2, open_timeout=2)
    assert src.kind == "camera"
    with pytest.raises(SourceError, match=r"source 63 failed \(cannot open\) after 2 reopen attempt"):
        next(iter(src))
    assert src.backoffs == [0.01, 0.02]
