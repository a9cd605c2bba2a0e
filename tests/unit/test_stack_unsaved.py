"""A stop that could not save the embedded broker blocks the next start with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from streambill.broker.persist import SnapshotError
from streambill.settings import load_settings
from streambill.stack import UNSAVED_MARKER, StackError, record_unsaved, refuse_unsaved, run_up


def test_no_marker_no_objection(tmp_path: Path) -> None:
    refuse_unsaved(tmp_path)


def test_a_recorded_failure_refuses_with_its_reason(tmp_path: Path) -> None:
    record_unsaved(tmp_path, SnapshotError("reading x[1] did not reach the end offsets"))
    with pytest.raises(StackError) as info:
        refuse_unsaved(tmp_path)
    assert "did not reach the end offsets" in info.value.message
    assert str(tmp_path / UNSAVED_MARKER) in info.value.message


def test_up_exits_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_unsaved(tmp_path, SnapshotError("timed out"))
    settings = load_settings(data_dir=tmp_path, broker_storage="durable", kafka_bootstrap=None)

    assert run_up(settings) == 1

    err = capsys.readouterr().err
    assert "could not be saved when it last stopped (" in err
    assert not (tmp_path / "logs" / "broker.log").exists()  # no broker was started
