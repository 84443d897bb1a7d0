"""A project's notes are bounded in every answer that carries them: 340 long notes in one
project passed the 32 MiB gRPC message limit, and the tenant's whole ListProjects (the
project list over HTTP and the CLI) failed with RESOURCE_EXHAUSTED, as did its GetProject."""

from __future__ import annotations

from tests.support.inprocess import Clients

NOTES_PER_LIST, NOTE_PREVIEW = 3, 300  # ListProjects: the newest 3 notes, cut to 300 chars
NOTES_PER_READ = 1_000_000  # GetProject: about this many characters of notes
LONGEST = 100_000  # the longest note AddProjectNote accepts
MANY = 340  # 34 MB of notes: past the message limit


def numbered(i: int) -> str:
    return f"{i:04d}" + "n" * (LONGEST - 4)


async def test_a_project_s_many_long_notes_leave_the_list_and_the_project_readable(
    runs: Clients,
) -> None:
    noisy = await runs.runs.create_project("noisy")
    quiet = await runs.runs.create_project("quiet")
    for i in range(MANY):
        await runs.runs.add_project_note(noisy.id, numbered(i))

    listed = {p.name: p for p in await runs.runs.list_projects()}

    assert sorted(listed) == ["noisy", "quiet"]
    previews = listed["noisy"].notes
    assert [n.text[:4] for n in previews] == ["0339", "0338", "0337"][:NOTES_PER_LIST]
    assert all(n.text == numbered(int(n.text[:4]))[:NOTE_PREVIEW] + "…" for n in previews)
    assert listed["noisy"].notes_cut
    assert listed["noisy"].notes_left_out == MANY - NOTES_PER_LIST
    assert (list(listed["quiet"].notes), listed["quiet"].notes_left_out) == ([], 0)
    assert listed["quiet"].id == quiet.id

    project = await runs.runs.get_project(noisy.id)

    given = len(project.notes)
    assert 1 < given < MANY and given * LONGEST <= NOTES_PER_READ + LONGEST
    assert [n.text for n in project.notes] == [numbered(MANY - 1 - i) for i in range(given)]
    assert project.notes_left_out == MANY - given and not project.notes_cut


async def test_a_project_with_a_few_short_notes_is_answered_whole(runs: Clients) -> None:
    project = await runs.runs.create_project("p")
    texts = ["first", "second", "x" * NOTE_PREVIEW, "newest"]
    for text in texts:
        await runs.runs.add_project_note(project.id, text)

    (listed,) = await runs.runs.list_projects()
    read = await runs.runs.get_project(project.id)

    assert [n.text for n in listed.notes] == texts[::-1][:NOTES_PER_LIST]
    assert (listed.notes_left_out, listed.notes_cut) == (len(texts) - NOTES_PER_LIST, False)
    assert [n.text for n in read.notes] == texts[::-1]
    assert (read.notes_left_out, read.notes_cut) == (0, False)
    assert {n.project_id for n in [*listed.notes, *read.notes]} == {project.id}
