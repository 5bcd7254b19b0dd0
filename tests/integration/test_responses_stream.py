"""The commit point of a streamed Responses API call (POST /v1/responses, "stream": true),
through the real bulwark binary: the preamble (response.created, response.in_progress) is
held with the head, so a response.failed or error event before any output is retried like
an error first event; the first output event commits. Chat completion streams still commit
at their first event.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_responses_stream
"""

from __future__ import annotations

import json
import time
import unittest

from harness import RawConnection, RawResponse, raw_request
from test_openai_sdk import run_script
from test_retries import RetryTestCase, sse_body, sse_data, stream_events

RESPONSES_PATH = "/v1/responses"
RESPONSES_BODY = json.dumps({"model": "gpt-4o-mini", "input": "Say hello.", "stream": True})


def event(type_: str, seq: int, **fields) -> str:
    """One Responses API event, framed as OpenAI sends it."""
    data = {"type": type_, "sequence_number": seq, **fields}
    return f"event: {type_}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def response_object(rid: str, status: str, output: list | None = None, error=None) -> dict:
    return {"id": rid, "object": "response", "created_at": 1764338400, "status": status,
            "model": "gpt-4o-mini", "output": output or [], "error": error,
            "incomplete_details": None, "usage": None}


def preamble(rid: str) -> list[str]:
    return [event("response.created", 0, response=response_object(rid, "in_progress")),
            event("response.in_progress", 1, response=response_object(rid, "in_progress"))]


def good_stream(rid: str, text: str = "Hello from Bulwark.") -> list[str]:
    """A complete, successful Responses stream whose text is `text`."""
    pieces = [text[:5], text[5:]]
    item = {"id": f"msg_{rid}", "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {"type": "output_text", "text": text, "annotations": []}
    done_item = {**item, "status": "completed", "content": [done_part]}
    seq = iter(range(2, 100))
    events = preamble(rid) + [
        event("response.output_item.added", next(seq), output_index=0, item=item),
        event("response.content_part.added", next(seq), item_id=item["id"], output_index=0,
              content_index=0, part=part),
    ]
    events += [event("response.output_text.delta", next(seq), item_id=item["id"], output_index=0,
                     content_index=0, delta=piece) for piece in pieces]
    events += [
        event("response.output_text.done", next(seq), item_id=item["id"], output_index=0,
              content_index=0, text=text),
        event("response.content_part.done", next(seq), item_id=item["id"], output_index=0,
              content_index=0, part=done_part),
        event("response.output_item.done", next(seq), output_index=0, item=done_item),
        event("response.completed", next(seq),
              response={**response_object(rid, "completed", [done_item]),
                        "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}),
    ]
    return events


def failed(rid: str, seq: int = 2) -> str:
    return event("response.failed", seq, response=response_object(
        rid, "failed", error={"code": "server_error", "message": "The model failed."}))


def error_event(seq: int = 2) -> str:
    return event("error", seq, code="server_error",
                 message="The server had an error while processing your request.", param=None)


def raw(events: list[str], **extra) -> dict:
    """A fake action sending `events` verbatim, without a [DONE] (Responses streams have none)."""
    return {"sse": events, "sse_raw": True, "done": False, **extra}


def event_types(body: bytes) -> list[str]:
    return [json.loads(d)["type"] for d in sse_data(body) if d.startswith("{")]


class ResponsesStreamTest(RetryTestCase):

    def responses_stream(self, path: str = RESPONSES_PATH, bulwark=None) -> RawResponse:
        """A streamed Responses call read to its end, with when its head arrived."""
        bulwark = bulwark or self.bulwark
        with RawConnection(bulwark.port, timeout=15) as conn:
            started = time.monotonic()
            conn.send(raw_request("POST", path, RESPONSES_BODY,
                                  headers=[("Content-Type", "application/json")]))
            resp = conn.read_head()
            resp.head_after = time.monotonic() - started  # type: ignore[attr-defined]
            for _ in conn.iter_body(resp, "POST"):
                pass
            resp.closed = conn.eof  # type: ignore[attr-defined]
        return resp

    def assert_exact_stream(self, resp: RawResponse, events: list[str], attempts: int) -> None:
        self.assertEqual(resp.status, 200, bytes(resp.body)[:300])
        self.assertTrue((resp.header("content-type") or "").startswith("text/event-stream"))
        self.assert_bulwark_headers(resp, attempts)
        self.assertEqual(bytes(resp.body), "".join(events).encode(),
                         "the client did not get exactly the upstream's stream")
        self.assertTrue(resp.complete, "the stream did not end with its terminating chunk")

    def test_failure_in_the_preamble_is_retried(self):
        good = good_stream("resp_good")
        failures = {
            "response.failed": preamble("resp_bad") + [failed("resp_bad")],
            "error event": preamble("resp_bad") + [error_event()],
            "error event, keep-alives, CRLF": [
                e.replace("\n", "\r\n") for e in
                [": ping\n\n"] + preamble("resp_bad") + [": ping\n\n", error_event()]],
            "response.failed then more": preamble("resp_bad") + [failed("resp_bad"),
                                                                 event("response.done", 3)],
        }
        for nth, (name, failure) in enumerate(failures.items(), start=1):
            with self.subTest(name):
                self.fake.reset()
                self.fake.script([raw(failure, gap=0.02), raw(good, gap=0.02)])
                resp = self.responses_stream()
                self.assert_exact_stream(resp, good, 2)
                self.assertEqual(len(self.fake.requests), 2)
                _, attempts = self.request_logs(nth=nth)
                self.assertEqual([(a["outcome"], a["retryable"]) for a in attempts],
                                 [("stream_error", True)])

    def test_preamble_is_held_until_the_first_output(self):
        good = good_stream("resp_slow")
        # The fake pauses before each event: the head may only leave with the first output event.
        self.fake.script([raw(good, gap=0.15)])
        resp = self.responses_stream(path=RESPONSES_PATH + "?api-version=1")
        self.assert_exact_stream(resp, good, 1)
        self.assertGreaterEqual(resp.head_after, 0.3, "the head left before the first output")
        self.assertEqual(self.fake.requests[0].path, RESPONSES_PATH)

    def test_failure_after_the_first_output_is_passed_through(self):
        rid = "resp_late"
        committed = good_stream(rid)[:5]  # the preamble, item and part added, one delta
        laters = {"response.failed": failed(rid, 5), "error event": error_event(5)}
        for nth, (name, later) in enumerate(laters.items(), start=1):
            with self.subTest(name):
                self.fake.reset()
                stream = committed + [later]
                self.fake.script([raw(stream, gap=0.02), raw(good_stream("resp_replayed"))])
                resp = self.responses_stream()
                self.assert_exact_stream(resp, stream, 1)
                self.assertEqual(event_types(bytes(resp.body))[-1], json.loads(
                    sse_data(later.encode())[0])["type"])
                self.assert_requests_settled(1, nth=nth)

    def test_finished_answers_commit(self):
        rid = "resp_done"
        done = {"completed": [event("response.completed", 2,
                                    response=response_object(rid, "completed"))],
                "incomplete": [event("response.incomplete", 2,
                                     response=response_object(rid, "incomplete"))]}
        for nth, (name, tail) in enumerate(done.items(), start=1):
            with self.subTest(name):
                self.fake.reset()
                stream = preamble(rid) + tail
                self.fake.script([raw(stream), raw(good_stream("resp_replayed"))])
                resp = self.responses_stream()
                self.assert_exact_stream(resp, stream, 1)
                self.assert_requests_settled(1, nth=nth)

    def test_failure_on_every_attempt_reaches_the_client_as_it_was(self):
        attempts = [preamble(f"resp_{i}") + [failed(f"resp_{i}")] for i in (1, 2, 3)]
        self.fake.script([raw(a) for a in attempts])
        resp = self.responses_stream()
        self.assertEqual(resp.status, 200)
        self.assert_gave_up(resp, 3)
        self.assertEqual(bytes(resp.body), "".join(attempts[2]).encode())
        self.assertTrue(resp.complete)
        self.assert_requests_settled(3)

    def test_preamble_held_past_first_byte_timeout_is_committed(self):
        # timeouts.first_byte is 300ms: keep-alives that stretch the preamble past it commit it,
        # and what fails afterwards is passed through.
        stream = preamble("resp_keepalive") + [": ping\n\n"] * 4 + [failed("resp_keepalive")]
        self.fake.script([raw(stream, gap=0.12), raw(good_stream("resp_replayed"))])
        resp = self.responses_stream()
        self.assert_exact_stream(resp, stream, 1)
        self.assertLess(resp.head_after, 0.9, "the preamble was held past timeouts.first_byte")
        self.assert_requests_settled(1)

    def test_more_than_64_kib_of_preamble_is_committed(self):
        padding = ": " + "x" * 1000 + "\n\n"
        stream = preamble("resp_big") + [padding] * 70 + [failed("resp_big")]
        self.fake.script([raw(stream), raw(good_stream("resp_replayed"))])
        resp = self.responses_stream()
        self.assert_exact_stream(resp, stream, 1)
        self.assert_requests_settled(1)

    def test_chat_stream_still_commits_at_its_first_event(self):
        # The same preamble-then-failure on the chat path is committed at the first event, and a
        # chat stream's head leaves with its first chunk.
        stream = preamble("resp_chat") + [failed("resp_chat")]
        self.fake.script([raw(stream), raw(good_stream("resp_replayed"))])
        resp = self.stream()
        self.assert_exact_stream(resp, stream, 1)
        self.assert_requests_settled(1, nth=1)

        events = stream_events("chat")
        self.fake.reset()
        self.fake.script([{"sse": events, "gap": 0.3}])
        with RawConnection(self.bulwark.port, timeout=15) as conn:
            started = time.monotonic()
            conn.send(raw_request("POST", "/v1/chat/completions", json.dumps(
                {"model": "gpt-4o-mini", "stream": True, "messages": []}),
                headers=[("Content-Type", "application/json")]))
            head = conn.read_head()
            head_after = time.monotonic() - started
            for _ in conn.iter_body(head, "POST"):
                pass
        self.assertLess(head_after, 0.25, "a chat stream's head waited past its first event")
        self.assertEqual(bytes(head.body), sse_body(events))
        self.assert_bulwark_headers(head, 1)


class ResponsesStreamSdkTest(RetryTestCase):
    """tests/e2e/responses.mjs: client.responses.create({stream: true}) through Bulwark."""

    config = {**RetryTestCase.config, "timeouts": {"first_byte": "5s"}}

    def test_sdk_gets_the_retried_stream_whole(self):
        text = "Hello through Bulwark."
        good = good_stream("resp_sdk_ok", text)
        self.fake.script([
            raw(preamble("resp_sdk_failed") + [failed("resp_sdk_failed")], gap=0.02),
            raw(good, gap=0.02, headers=[("x-request-id", "req_responses_ok")]),
        ])
        summary, proc = run_script("responses.mjs", self.bulwark.openai_base_url,
                                   EXPECT_TEXT=text)
        self.assertTrue(summary.get("ok") and proc.returncode == 0,
                        f"responses.mjs failed (exit {proc.returncode}): {json.dumps(summary)}\n"
                        f"stderr:\n{proc.stderr}\n{self.bulwark.output(tail=30)}")
        self.assertEqual(summary["attempts"], "2")
        self.assertEqual(summary["request_id"], "req_responses_ok")
        self.assertEqual(summary["response_id"], "resp_sdk_ok")
        self.assertEqual(summary["types"], event_types("".join(good).encode()))
        self.assertEqual([(r.method, r.path) for r in self.fake.requests],
                         [("POST", RESPONSES_PATH)] * 2)
        self.assertIs(self.fake.requests[0].json()["stream"], True)


if __name__ == "__main__":
    unittest.main()
