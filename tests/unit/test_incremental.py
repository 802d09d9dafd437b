"""Incremental work against a local fake OpenAI-compatible server: adding prompts asks only for
the new records, removing one stops it from being read, API refusals are recorded, not fatal.

Server behaviour by the user message's first word: `refuse` -> HTTP 400 content filter,
`filtered` -> 200 with content null and finish_reason content_filter, anything else -> an echo.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthpref.config import parse_config
from synthpref.rundir import RunDir, read_jsonl, write_jsonl
from synthpref.stages import generate
from synthpref.stages.prompts import prompt_id


class EchoServer:
    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with server.lock:
                    server.calls[user] += 1
                word = user.split()[0]
                if word == "refuse":
                    data = {"error": {"message": "The response was filtered due to the prompt triggering "
                                                 "content management policy.", "code": "content_filter"}}
                    return self._send(400, data)
                if word == "filtered":
                    return self._send(200, {"choices": [{"message": {"role": "assistant", "content": None},
                                                         "finish_reason": "content_filter"}]})
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"echo {user} {body.get('seed')}"},
                                              "finish_reason": "stop"}], "usage": {"completion_tokens": 3}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = EchoServer()
    yield s
    s.stop()


SAMPLES = 2  # plus one greedy answer per prompt


def _cfg(server, tmp_path, models=("api", "api2"), samples=SAMPLES):
    opts = {"api_base": server.base, "api_key_env": None, "max_concurrency": 2, "max_retries": 1, "backoff_s": 0.0}
    return parse_config({
        "name": "inc", "seed": 5, "run_dir": str(tmp_path / "run"),
        "models": {m: {"path": f"gpt-{m}", "backend": "openai", "options": opts} for m in models},
        "target": models[0], "generate": {"sources": list(models), "sampling": {"num_samples": samples, "min_chars": 0}},
        "pairs": {"settings": ["self_rm"]}, "prompts": {"train": {"source": "advbench"}},
    })


def _prompts(rd, texts):
    write_jsonl(rd.path("prompts", "train.jsonl"), [{"prompt_id": prompt_id(t), "text": t} for t in texts])


def test_adding_four_prompts_asks_only_for_their_records(server, tmp_path):
    cfg = _cfg(server, tmp_path)
    rd = RunDir(cfg.run_path).create()
    first = [f"ok prompt {i}" for i in range(5)]
    _prompts(rd, first)
    generate.run(cfg, rd)
    assert sum(server.calls.values()) == 5 * (SAMPLES + 1) * 2
    before = {m: read_jsonl(rd.path("generate", f"{m}.jsonl")) for m in ("api", "api2")}
    server.calls.clear()

    added = [f"ok new {i}" for i in range(4)]
    _prompts(rd, first + added)
    generate.run(cfg, rd)
    # exactly 4 x (samples + greedy) new requests per model, all for the new prompts
    assert sum(server.calls.values()) == 4 * (SAMPLES + 1) * 2
    assert set(server.calls) == set(added)
    for m in ("api", "api2"):
        after = {r["response_id"]: r for r in read_jsonl(rd.path("generate", f"{m}.jsonl"))}
        assert len(after) == 9 * (SAMPLES + 1)
        assert all(after[r["response_id"]] == r for r in before[m])  # old records untouched

    # Removing a prompt and a model: nothing is asked, their records leave generate/ for stale/.
    server.calls.clear()
    cfg1 = _cfg(server, tmp_path, models=("api",))
    _prompts(rd, first[1:] + added)
    generate.run(cfg1, rd)
    assert sum(server.calls.values()) == 0
    recs = read_jsonl(rd.path("generate", "api.jsonl"))
    assert len(recs) == 8 * (SAMPLES + 1) and prompt_id(first[0]) not in {r["prompt_id"] for r in recs}
    assert not rd.path("generate", "api2.jsonl").exists() and rd.path("stale", "generate", "api2.jsonl").exists()
    stale = read_jsonl(rd.path("stale", "generate", "api.jsonl"))
    assert {r["prompt_id"] for r in stale} == {prompt_id(first[0])}


def test_api_refusals_are_recorded_once_and_not_fatal(server, tmp_path):
    cfg = _cfg(server, tmp_path, models=("api",))
    rd = RunDir(cfg.run_path).create()
    _prompts(rd, ["ok fine", "refuse this harmful prompt", "filtered harmful prompt"])
    summary = generate.run(cfg, rd)
    recs = read_jsonl(rd.path("generate", "api.jsonl"))
    assert summary["responses"] == len(recs) == 3 * (SAMPLES + 1)
    assert summary["refused_by_api"] == 2 * (SAMPLES + 1)
    refused = [r for r in recs if r["refused_by_api"]]
    assert len(refused) == 2 * (SAMPLES + 1)
    assert all(r["dropped"] and r["finish_reason"] == "refused" for r in refused)
    assert server.calls["refuse this harmful prompt"] == SAMPLES + 1  # one call each: a refusal is not retried
    stats = json.loads(rd.path("generate", "stats.json").read_text())
    assert stats["models"]["api"]["refused_by_api"] == 2 * (SAMPLES + 1)
    server.calls.clear()
    generate.run(cfg, rd)
    assert sum(server.calls.values()) == 0  # answered (even by a refusal) means never asked again


def test_one_more_sample_asks_only_for_it(server, tmp_path):
    rd = RunDir(_cfg(server, tmp_path).run_path).create()
    _prompts(rd, [f"ok prompt {i}" for i in range(3)])
    generate.run(_cfg(server, tmp_path, models=("api",)), rd)
    before = read_jsonl(rd.path("generate", "api.jsonl"))
    server.calls.clear()
    generate.run(_cfg(server, tmp_path, models=("api",), samples=SAMPLES + 1), rd)
    assert sum(server.calls.values()) == 3  # one new sample per prompt
    after = {r["response_id"]: r for r in read_jsonl(rd.path("generate", "api.jsonl"))}
    assert len(after) == 3 * (SAMPLES + 2) and all(after[r["response_id"]] == r for r in before)
