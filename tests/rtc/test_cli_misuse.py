"""Every misuse of `rtc` and `tracks` ends with one line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtc.__main__ import main as rtc_main
from tracks.cli import main as tracks_main

SECRET = "s" * 32


def exit_status(call: object) -> int:
    try:
        status = call()  # type: ignore[operator]
    except SystemExit as stop:
        return int(stop.code or 0)
    return int(status)


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--secret", SECRET, "--blog-id", "1", "--user-id", "2", "--post-id", "abc"],
        ["token", "--secret", SECRET, "--blog-id", "0", "--user-id", "2", "--post-id", "3"],
        ["token", "--secret", SECRET, "--blog-id", "1", "--user-id", "2", "--post-id", "3",
         "--ttl", "nan"],
        ["token", "--blog-id", "1", "--user-id", "2", "--post-id", "3"],
        ["serve", "--port", "eighty"],
        ["serve", "--ping-interval", "nan"],
        ["serve", "--room-grace", "inf"],
        ["bogus"],
        [],
    ],
)
def test_rtc_misuse_is_one_line_and_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTC_SECRET", raising=False)
    assert exit_status(lambda: rtc_main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtc"), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["RTC_PING_INTERVAL", "RTC_ANNOUNCE_TIMEOUT", "RTC_INGEST_RATE"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_settings_are_refused(
    name: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    assert exit_status(lambda: rtc_main(["serve"])) == 2
    err = capsys.readouterr().err
    assert "must be a finite number" in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "{store}", "--blog-id", "abc"],
        ["report", "{store}", "--since", "nan"],
        ["tail", "{store}", "--interval", "nan"],
        ["tail", "{store}", "-n", "-3"],
        ["prune", "{store}", "--older-than", "1d"],
        ["aggregate", "{store}"],  # not a SQLite file
        ["aggregate", "{missing}"],
        ["frobnicate"],
    ],
)
def test_tracks_misuse_is_one_line_and_status_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "events.sqlite"
    store.write_text("not a database")
    argv = [a.format(store=store, missing=tmp_path / "missing.sqlite") for a in argv]
    assert exit_status(lambda: tracks_main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracks"), err
    assert err.count("\n") == 1, err


def test_rtc_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import rtc
    import tracks

    assert exit_status(lambda: rtc_main(["--version"])) == 0
    assert capsys.readouterr().out.strip() == f"rtc {tracks.__version__}"
    assert rtc.__version__ == tracks.__version__ != "0+unknown"


def test_tracks_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import tracks

    assert exit_status(lambda: tracks_main(["--version"])) == 0
    assert capsys.readouterr().out.strip() == f"tracks {tracks.__version__}"
