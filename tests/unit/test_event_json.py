"""An event's JSON carries its text as UTF-8 wherever it is re-encoded: ASCII-escaped, a CJK
character weighed 6 bytes and an emoji 12, so runs' answer to a long CJK delta (read back from
the database and dumped again) passed the 32 MiB a message holds though its write had fit, and
the run failed; the SSE frames were twice as large as the text they carried."""

from __future__ import annotations

import json

from nyxflow.v1 import common_pb2 as pb
from nyxflow_gateway.convert import event_data
from nyxflow_runs import convert, models

TEXT = "日本語の回答 😀 and ascii\nline two\u2028"


def test_runs_gives_an_event_s_text_unescaped() -> None:
    row = models.RunEvent(run_id="r", seq=3, type="step_delta", data={"text": TEXT}, created_at=1.0)
    data_json = convert.event(row).data_json
    assert "日本語の回答 😀" in data_json
    assert json.loads(data_json) == {"text": TEXT}


def test_an_sse_frame_s_data_is_one_line_of_utf_8() -> None:
    event = pb.RunEvent(
        run_id="r", seq=3, type="step_delta", data_json=json.dumps({"text": TEXT}), created_at=1.0
    )
    data = event_data(event)
    assert "日本語の回答 😀" in data
    assert "\n" not in data and "\r" not in data  # one SSE data line
    assert json.loads(data)["text"] == TEXT
