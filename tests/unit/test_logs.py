"""boatwist.logs and the access-log file: floods summarised per source, every log file bounded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, globalLogPublisher, textFileLogObserver
from twisted.python.logfile import LogFile

from boatwist.logs import MAX_SOURCES, MAX_SUMMARY_LINES, SourceSummary, bound_twistd_logfiles, rotating_observer
from boatwist.web.accesslog import AccessLogFile


def summaries(events: Any) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "boatwist.summary"]


def test_a_source_gets_per_source_lines_a_second_then_a_summary() -> None:
    """
    1,000 refused requests from one source in a second: 5 are written one by
    one, the rest make one summary line at the next flush, counted by kind.
    """
    clock = Clock()
    summary = SourceSummary(clock.seconds, per_source=5, max_lines=50)
    with capturedLogs() as events:
        admitted = sum(summary.admit("10.0.0.5", "401" if n % 4 else "408") for n in range(1000))
        clock.advance(1)
        summary.flush()
    assert admitted == 5
    [line] = summaries(events)
    assert line["source"] == "10.0.0.5" and line["count"] == 995
    assert "401 x" in line["what"] and "408 x" in line["what"]
    assert summary.admit("10.0.0.5", "401")  # a new second: lines again


def test_all_sources_together_get_max_lines_a_second() -> None:
    """200 sources, one line each in the same second: max_lines written, the rest summarised."""
    clock = Clock()
    summary = SourceSummary(clock.seconds, per_source=5, max_lines=50)
    admitted = sum(summary.admit(f"10.0.{n // 250}.{n % 250}", "401") for n in range(200))
    assert admitted == 50


def test_the_summary_itself_is_bounded() -> None:
    """
    From very many sources: at most MAX_SUMMARY_LINES lines name a source,
    one more counts the rest; no more than MAX_SOURCES sources are remembered.
    """
    clock = Clock()
    summary = SourceSummary(clock.seconds, per_source=1, max_lines=1)
    for n in range(MAX_SOURCES * 3):
        summary.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", "401")
    assert len(summary._held) <= MAX_SOURCES + 1
    with capturedLogs() as events:
        summary.flush()
        summary.flush()  # nothing held: nothing written
    lines = summaries(events)
    assert len(lines) == MAX_SUMMARY_LINES + 1
    assert sum(line["count"] for line in lines) == MAX_SOURCES * 3 - 1


def test_rotating_observer_keeps_files_and_bounds_the_total(tmp_path: Path) -> None:
    """[log] file: rotated at max_size, `files` kept, so at most max_size * (files + 1) bytes in all."""
    path = tmp_path / "embweb.log"
    observer = rotating_observer(str(path), max_size=4096, files=2)
    for n in range(2000):
        observer({"log_format": "line {n} " + "x" * 60, "n": n, "log_time": 0.0, "log_level": None})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["embweb.log", "embweb.log.1", "embweb.log.2"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 4096 * 3 + 200
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)


def test_twistds_log_file_is_bounded_when_found(tmp_path: Path) -> None:
    """twistd's --logfile (a LogFile behind a FileLogObserver) gets the same rotation and the same count."""
    log_file = LogFile.fromFullPath(str(tmp_path / "twistd.log"))
    observer = textFileLogObserver(log_file)
    globalLogPublisher.addObserver(observer)
    try:
        assert log_file.maxRotatedFiles is None
        assert bound_twistd_logfiles(65536, 3) >= 1
        assert (log_file.rotateLength, log_file.maxRotatedFiles) == (65536, 3)
    finally:
        globalLogPublisher.removeObserver(observer)
        log_file.close()


def test_access_log_file_is_rotated_as_it_reaches_max_size(tmp_path: Path) -> None:
    """
    [http] access_log is rotated as soon as a line takes it to [log] max_size
    (a burst between two flushes cannot overshoot); [log] files are kept,
    the oldest deleted: never more than max_size * (files + 1) and a line.
    """
    path = tmp_path / "access.log"
    log = AccessLogFile(str(path), max_size=1000, files=2)
    lines = [f"127.0.0.1 - - line {n:04d} " + "y" * 30 for n in range(200)]  # 200 lines, 10 KB, no flush
    for line in lines:
        log.write(line)
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["access.log", "access.log.1", "access.log.2"]
    sizes = [(tmp_path / name).stat().st_size for name in os.listdir(tmp_path)]
    assert max(sizes) < 1000 + len(lines[0]) + 1 and sum(sizes) < 3 * 1000 + 3 * (len(lines[0]) + 1)
    kept = "".join((tmp_path / name).read_text() for name in ("access.log.2", "access.log.1", "access.log"))
    assert kept.endswith(lines[-1] + "\n")  # the newest lines are the ones kept, in order
    assert kept.splitlines() == lines[-len(kept.splitlines()):]


def test_a_log_takes_at_most_an_eighth_of_a_small_file_system(tmp_path: Path) -> None:
    """On a file system of 2 MiB the 1 MiB x 6 default shrinks to an eighth of it; elsewhere it is kept."""
    from boatwist.logs import MIN_ROTATE_SIZE, rotate_size

    class Small:
        f_blocks, f_frsize = 512, 4096  # 2 MiB

    def small(path: str) -> Any:
        return Small()

    path = str(tmp_path / "access.log")
    assert rotate_size(path, 1 << 20, 5, statvfs=small) == max(MIN_ROTATE_SIZE, (2 << 20) // 8 // 6)
    assert rotate_size(path, 0, 5, statvfs=small) == 0
    assert rotate_size(str(tmp_path / "access.log"), 1 << 20, 5) == 1 << 20  # this disk is larger than 48 MiB