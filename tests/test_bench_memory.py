"""The memory benchmark's own parts that need no proxy: its fake upstream, the recall-block
reading and evidence matching, and how LoCoMo sessions become a client's calls."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import memory_replay as replay
from bench import memory_upstream as upstream

KEY = "sk-test-upstream"


@pytest.fixture
def fake_upstream():
    server = upstream.make_server(KEY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def call(port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


CHAT = {"model": "m", "messages": [{"role": "system", "content": "Current date: today"},
                                   {"role": "user", "content": "hello"}]}
AUTH = {"authorization": f"Bearer {KEY}"}


def test_upstream_answers_the_scripted_turn_and_keeps_the_request(fake_upstream):
    assert call(fake_upstream, "PUT", "/bench/next-answer", {"text": "Hi Caroline!"})[0] == 200
    status, _, body = call(fake_upstream, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hi Caroline!"
    status, _, body = call(fake_upstream, "GET", "/bench/last")
    last = json.loads(body)
    assert last["count"] == 1 and last["body"] == CHAT and last["headers"]["authorization"] == AUTH["authorization"]
    # The script is used once: an unscripted call is an error the replay sees, not a made-up answer.
    assert call(fake_upstream, "POST", "/v1/chat/completions", CHAT, AUTH)[0] == 500


def test_upstream_streams_the_scripted_turn(fake_upstream):
    text = "one two three four five six seven eight nine ten eleven"
    call(fake_upstream, "PUT", "/bench/next-answer", {"text": text})
    status, headers, body = call(fake_upstream, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(deltas) == text


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "human", "content": "x"}]}, "messages.[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages.[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
])
def test_upstream_refuses_what_the_api_refuses(fake_upstream, body, param):
    call(fake_upstream, "PUT", "/bench/next-answer", {"text": "never sent"})
    status, _, answer = call(fake_upstream, "POST", "/v1/chat/completions", body, AUTH)
    assert status == 400
    assert json.loads(answer)["error"]["param"] == param


def test_upstream_refuses_a_wrong_key(fake_upstream):
    status, _, body = call(fake_upstream, "POST", "/v1/chat/completions", CHAT, {"authorization": "Bearer other"})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert json.loads(call(fake_upstream, "GET", "/bench/last")[2])["count"] == 0


def test_upstream_runs_as_its_own_process():
    script = Path(upstream.__file__)
    process = subprocess.Popen([sys.executable, str(script), "--api-key", KEY], stdout=subprocess.PIPE)
    try:
        port = int(process.stdout.readline())
        call(port, "PUT", "/bench/next-answer", {"text": "ok"})
        assert call(port, "POST", "/v1/chat/completions", CHAT, AUTH)[0] == 200
    finally:
        process.terminate()
        process.wait(10)


def user_message(text: str) -> list[dict]:
    return [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": text}]


def test_recall_block_is_read_from_the_last_user_message_between_the_fence_lines():
    injected = ("What did I paint?\n\n<memory-routing-recall>\n[2026-11-23] user: I painted a  sunrise\nlast year.\n"
                "</memory-routing-recall>")
    assert replay.recall_block(user_message(injected)) == "[2026-11-23] user: I painted a  sunrise\nlast year."
    # Parts-shaped content (as Anthropic-style or multimodal clients send it) is read too.
    parts = [{"role": "user", "content": [{"type": "text", "text": injected}, {"type": "image_url", "image_url": {}}]}]
    assert "sunrise" in replay.recall_block(parts)


@pytest.mark.parametrize("text", [
    "no block at all",
    "<memory-routing-recall>\nnever closed",
    "inline <memory-routing-recall> x </memory-routing-recall> is not a fence",
])
def test_no_recall_block(text):
    assert replay.recall_block(user_message(text)) is None


def test_a_block_in_an_earlier_user_message_does_not_count():
    messages = [{"role": "user", "content": "<memory-routing-recall>\nold\n</memory-routing-recall>"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "new question"}]
    assert replay.recall_block(messages) is None


def test_evidence_matching_normalises_whitespace_only():
    block = "[2023-05-08] user: I went to a LGBTQ support group\n yesterday and it was so powerful."
    assert replay.evidence_found(block, "I went to a LGBTQ support group yesterday and it was so powerful.")
    assert not replay.evidence_found(block, "I went to a LGBTQ support group yesterday and it was SO powerful.")
    assert not replay.evidence_found(block, "Something else entirely.")
    assert not replay.evidence_found(None, "I went")
    assert not replay.evidence_found(block, "   ")


def test_sessions_become_calls_with_the_history_so_far():
    turns = [
        {"speaker": "Mel", "dia_id": "D1:1", "text": "Hey Caro! (opening by B)"},
        {"speaker": "Caro", "dia_id": "D1:2", "text": "a1"},
        {"speaker": "Mel", "dia_id": "D1:3", "text": "b1"},
        {"speaker": "Caro", "dia_id": "D1:4", "text": "a2"},
    ]
    session = replay.build_session(1, "8 May, 2023", turns, "Caro")
    assert [t.dia_id for t in session.opening] == ["D1:1"]
    opening, first, second = session.exchanges
    # B's opening turn is sent as the answer to a short opening user turn, so the proxy stores it.
    assert opening.history == () and opening.user.text == replay.OPENING_USER_TEXT
    assert opening.answer is not None and opening.answer.dia_id == "D1:1"
    assert first.history == ({"role": "user", "content": replay.OPENING_USER_TEXT},
                             {"role": "assistant", "content": "Hey Caro! (opening by B)"})
    assert (first.user.text, first.answer.text) == ("a1", "b1")
    assert second.answer is None  # the session ends with A: an empty answer is scripted
    assert replay.chat_messages(session.date, second.history, second.user.text) == [
        {"role": "system", "content": "Current date: 8 May, 2023"},
        {"role": "user", "content": replay.OPENING_USER_TEXT},
        {"role": "assistant", "content": "Hey Caro! (opening by B)"},
        {"role": "user", "content": "a1"}, {"role": "assistant", "content": "b1"},
        {"role": "user", "content": "a2"},
    ]


def test_conversation_keeps_questions_of_categories_1_to_4_with_their_evidence():
    sample = {
        "sample_id": "conv-x",
        "conversation": {"speaker_a": "A", "speaker_b": "B", "session_1_date_time": "1:56 pm on 8 May, 2023",
                         "session_1": [{"speaker": "B", "dia_id": "D1:1", "text": "hello"},
                                       {"speaker": "A", "dia_id": "D1:2", "text": "I adopted a dog"},
                                       {"speaker": "B", "dia_id": "D1:3", "text": "nice"}]},
        "qa": [{"question": "q1", "answer": "x", "evidence": ["D1:2"], "category": 4},
               {"question": "q2", "answer": "x", "evidence": ["D1:1", "D9:9"], "category": 2},
               {"question": "q5", "adversarial_answer": "x", "evidence": [], "category": 5}],
    }
    conversation = replay.build_conversation(sample)
    assert conversation.user_id == "locomo-conv-x"
    assert [(q.index, q.category, [t.dia_id for t in q.evidence]) for q in conversation.questions] == [
        (0, 4, ["D1:2"]), (1, 2, ["D1:1"])]
    assert conversation.missing_evidence == 1
    assert conversation.unstorable == frozenset()  # the opening B turn is sent as an answer
    dated = list(conversation.dated_memories())
    # Imported with the session's own date, every turn (the opening one included), a second apart.
    assert [(m["user_id"], m["role"], m["text"]) for m in dated] == [
        ("locomo-conv-x-dated", "assistant", "hello"), ("locomo-conv-x-dated", "user", "I adopted a dog"),
        ("locomo-conv-x-dated", "assistant", "nice")]
    assert [m["created_at"] for m in dated] == [1683554160.0, 1683554161.0, 1683554162.0]  # 2023-05-08 13:56 UTC


def test_recall_summary_per_category_and_block_sizes():
    results = [
        replay.QuestionResult("c", 0, 4, [True, False], 0, 100, 3.0),
        replay.QuestionResult("c", 1, 4, [True], 0, 300, 5.0),
        replay.QuestionResult("c", 2, 2, [False], 1, None, None),
    ]
    summary = replay.recall_summary(results)
    assert summary["overall"]["recall_any"] == pytest.approx(2 / 3)
    assert summary["overall"]["recall_all"] == pytest.approx(1 / 3)
    assert summary["overall"]["reachable_any"] == pytest.approx(2 / 3)
    assert summary["per_category"]["4 single-hop"]["recall_all"] == 0.5
    assert summary["per_category"]["2 temporal"]["recall_any"] == 0
    assert (summary["injected"], summary["block_chars_median"], summary["block_chars_max"]) == (2, 200, 300)
    assert (summary["recall_ms_p50"], summary["recall_ms_p95"]) == (3.0, 5.0)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (replay.percentile(values, 0.5), replay.percentile(values, 0.95)) == (50.0, 95.0)
    assert replay.percentile([7.0], 0.95) == 7.0


def test_filler_memories_are_import_lines_of_another_user_marked_as_filler():
    lines = list(replay.filler_memories(50))
    assert len(lines) == 50
    assert set(lines[0]) == {"user_id", "conversation_id", "client", "model", "role", "text", "created_at"}
    assert all(line["user_id"] == replay.FILLER_USER and replay.FILLER_MARK in line["text"] for line in lines)
    assert lines == list(replay.filler_memories(50))  # seeded: every run imports the same store


def test_missing_data_is_a_clear_skip(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["memory_replay.py", "--data", str(tmp_path / "absent.json")])
    assert replay.main() == 0
    assert "bench-memory skipped: no LoCoMo data" in capsys.readouterr().out


def test_streamed_text_joins_the_deltas_and_needs_done():
    events = upstream.stream_events("m", "a streamed answer of more than eight words, to split it up")
    assert replay.streamed_text(b"".join(events)) == "a streamed answer of more than eight words, to split it up"
    assert replay.streamed_text(b"".join(events[:-1])) is None  # cut off before [DONE]
