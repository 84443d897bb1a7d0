"""GET /v1/projects and GET /v1/projects/{id} say how many notes they leave out, and the
list marks the notes whose text it cut."""

from __future__ import annotations

import httpx

from tests.support.processes import ProcessStack


async def test_the_project_list_cuts_and_counts_notes_and_the_project_gives_them_whole(
    stack: ProcessStack, http: httpx.AsyncClient
) -> None:
    created = await http.post("/v1/projects", json={"name": "with notes"}, headers=stack.headers)
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    texts = ["oldest", "second", "third", "l" * 1000]
    for text in texts:
        added = await http.post(
            f"/v1/projects/{project_id}/notes", json={"text": text}, headers=stack.headers
        )
        assert added.status_code == 201, added.text

    listed = await http.get("/v1/projects", headers=stack.headers)
    read = await http.get(f"/v1/projects/{project_id}", headers=stack.headers)

    assert listed.status_code == 200 and read.status_code == 200, (listed.text, read.text)
    (preview,) = [p for p in listed.json()["projects"] if p["id"] == project_id]
    assert [n["text"] for n in preview["notes"]] == ["l" * 300 + "…", "third", "second"]
    assert (preview["notes_left_out"], preview["notes_cut"]) == (1, True)
    whole = read.json()
    assert [n["text"] for n in whole["notes"]] == texts[::-1]
    assert (whole["notes_left_out"], whole["notes_cut"]) == (0, False)
