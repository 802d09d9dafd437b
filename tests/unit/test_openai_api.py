"""OpenAI-compatible backend against a real HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthpref.stages import generate
from synthpref.backends.generation import GenParams, GenRequest, get_backend_class
from synthpref.config import ModelSpec, parse_config
from synthpref.errors import BackendError, ConfigError
from synthpref.stages.prompts import prompt_id
from synthpref.rundir import RunDir, read_jsonl, write_jsonl

KEY = "sk-test-SECRET-0123456789"


class FakeServer:
    """Behaviour is chosen by the user message's first word:
    ok: a normal reply | rate: 429 once, then ok | slow: hangs past the client timeout once, then ok |
    badjson: always an unparseable 200 | fail: always 500 (until `healthy` is set)."""

    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.auth: set[str] = set()
        self.healthy = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with server.lock:
                    server.calls[user] += 1
                    n = server.calls[user]
                    server.bodies.append(body)
                    server.auth.add(self.headers.get("Authorization", ""))
                kind = user.split()[0]
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, b'{"error": "not found"}')
                    if kind == "rate" and n == 1:
                        return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                    if kind == "slow" and n == 1:
                        time.sleep(1.0)
                        return self._send(200, b"{}")
                    if kind == "badjson":
                        return self._send(200, b'{"choices": [ not json')
                    if kind == "fail" and not server.healthy:
                        return self._send(500, b'{"error": "internal"}')
                    reply = {"choices": [{"message": {"role": "assistant",
                                                      "content": f" echo {user} t={body['temperature']} s={body.get('seed')} "},
                                          "finish_reason": "stop"}],
                             "usage": {"completion_tokens": 7}}
                    self._send(200, json.dumps(reply).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _send(self, code, data, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", KEY)
    s = FakeServer()
    yield s
    s.stop()


def options(server, **kw):
    return {"api_base": server.base, "api_key_env": "TEST_API_KEY", "max_concurrency": 4, "timeout_s": 0.4,
            "max_retries": 3, "backoff_s": 0.01, **kw}


def backend(server, **kw):
    spec = ModelSpec(path="gpt-test", backend="openai", system_prompt="Be safe.", options=options(server, **kw))
    return get_backend_class("openai")(spec)


def req(text, key=None, seed=1, greedy=False):
    return GenRequest(key or text, ({"role": "user", "content": text},), seed, greedy)


def test_replies_retries_and_body(server):
    b = backend(server)
    reqs = [req("ok one", seed=11), req("ok two", greedy=True), req("rate limited"), req("slow reply")]
    out = {r.key: r for r in b.generate(reqs, GenParams(temperature=0.5, max_new_tokens=9))}
    b.close()
    assert out["ok one"].text == "echo ok one t=0.5 s=11" and out["ok one"].n_tokens == 7
    assert out["ok two"].text.startswith("echo ok two t=0.0")  # greedy -> temperature 0
    assert out["rate limited"].text.startswith("echo rate") and server.calls["rate limited"] == 2
    assert out["slow reply"].text.startswith("echo slow") and server.calls["slow reply"] == 2
    assert server.auth == {f"Bearer {KEY}"}
    body = next(b for b in server.bodies if b["messages"][-1]["content"] == "ok one")
    assert body["messages"][0] == {"role": "system", "content": "Be safe."}
    assert body["max_tokens"] == 9 and body["top_p"] == 0.9 and body["model"] == "gpt-test"


def test_malformed_json_retried_then_one_line_error(server, caplog):
    b = backend(server)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as e:
        list(b.generate([req("badjson please")], GenParams()))
    msg = str(e.value)
    assert "\n" not in msg and "'gpt-test'" in msg and "malformed" in msg and "HTTP 200" in msg
    assert server.calls["badjson please"] == 4  # 1 + max_retries
    assert KEY not in msg and KEY not in caplog.text


def test_permanent_500_names_model_and_status_and_keeps_successes(server):
    b = backend(server, max_retries=2)
    got = []
    with pytest.raises(BackendError, match=r"model 'gpt-test' .*HTTP 500 after 3 attempt"):
        for r in b.generate([req("fail now")] + [req(f"ok {i}") for i in range(6)], GenParams()):
            got.append(r.key)
    assert server.calls["fail now"] == 3
    # everything that succeeded before the error was handed back (so the stage can record it)
    assert set(got) <= {f"ok {i}" for i in range(6)} and len(got) >= 1


def test_missing_key_and_non_retryable_4xx(server, monkeypatch):
    monkeypatch.delenv("TEST_API_KEY")
    with pytest.raises(ConfigError, match="TEST_API_KEY is not set"):
        backend(server)
    b = get_backend_class("openai")(ModelSpec(path="m", backend="openai",
                                              options=options(server, api_key_env=None, api_base=server.base + "/x")))
    with pytest.raises(BackendError, match="HTTP 404.*not retried"):
        list(b.generate([req("ok")], GenParams()))
    assert server.calls["ok"] == 1


def test_stage_resume_does_not_re_request_done_records(server, tmp_path):
    """A run that dies on a failing prompt keeps its finished records; the re-run asks only for the rest."""
    cfg = parse_config({
        "name": "api", "seed": 3, "run_dir": str(tmp_path / "run"),
        "models": {"api": {"path": "gpt-test", "backend": "openai", "options": options(server, max_retries=1)}},
        "target": "api", "pairs": {"settings": ["self_rm"]}, "prompts": {"train": {"source": "advbench"}},
        "generate": {"sampling": {"num_samples": 2, "min_chars": 0}},
    })
    rd = RunDir(cfg.run_path).create()
    texts = ["ok alpha", "ok beta", "fail gamma", "ok delta"]
    write_jsonl(rd.path("prompts", "train.jsonl"), [{"prompt_id": prompt_id(t), "text": t} for t in texts])
    with pytest.raises(BackendError):
        generate.run(cfg, rd)
    done = read_jsonl(rd.path("generate", "api.jsonl.partial"))
    assert done and all(not r["text"].startswith("echo fail") for r in done)
    before = Counter(server.calls)
    server.healthy = True
    server.calls.clear()
    summary = generate.run(cfg, rd)
    recs = read_jsonl(rd.path("generate", "api.jsonl"))
    assert summary["responses"] == len(recs) == 12
    assert sum(server.calls.values()) == 12 - len(done)  # finished records were not requested again
    assert server.calls["fail gamma"] == 3 and before["fail gamma"] >= 2
    assert not any(KEY in p.read_text() for p in rd.root.rglob("*") if p.is_file())


def test_runtime_options_do_not_invalidate_finished_records(server, tmp_path):
    def h(**opt):
        cfg = parse_config({"name": "api", "models": {"api": {"path": "gpt-test", "backend": "openai", "options": opt}},
                            "target": "api", "pairs": {"settings": ["self_rm"]}, "prompts": {"train": {"source": "advbench"}}})
        prompts = [{"prompt_id": "p1", "text": "x"}]
        return generate.model_inputs_hash(cfg, "api", prompts, generate.model_plan(cfg, "api"))

    assert h(max_concurrency=2, timeout_s=5) == h(max_concurrency=64)
    assert h(api_base="http://a/v1") != h(api_base="http://b/v1")


def test_sampling_settings_do_not_invalidate_a_greedy_only_models_answers(tmp_path):
    """The GPT-4o role answers once, greedily (num_samples 0): a new temperature for the target's
    samples must not discard its paid answers; a sampled model's records are keyed by them."""
    def h(model, **sampling):
        cfg = parse_config({"name": "api", "target": "tgt", "pairs": {"settings": ["self_rm"]},
                            "models": {"api": {"path": "gpt-test", "backend": "openai"}, "tgt": {"path": "t"}},
                            "generate": {"sampling": sampling, "overrides": {"api": {"num_samples": 0}}},
                            "prompts": {"train": {"source": "advbench"}}})
        return generate.model_inputs_hash(cfg, model, [], generate.model_plan(cfg, model))

    assert h("api", temperature=0.5) == h("api", temperature=0.9, top_p=0.5, top_k=3, repetition_penalty=1.0)
    assert h("api", max_new_tokens=128) != h("api", max_new_tokens=64)
    assert h("api", greedy_penalties=True, repetition_penalty=1.2) != h("api", greedy_penalties=True,
                                                                          repetition_penalty=1.0)
    assert h("tgt", temperature=0.5) != h("tgt", temperature=0.9)


def test_greedy_answers_stored_under_the_earlier_key_are_kept_not_bought_again(server, tmp_path):
    """Runs made before greedy-only models were keyed by the greedy settings alone stored their
    answers under a key of every setting: the new key adopts that file instead of re-requesting."""
    cfg = parse_config({
        "name": "api", "seed": 3, "run_dir": str(tmp_path / "run"), "target": "tgt",
        "models": {"api": {"path": "gpt-test", "backend": "openai", "options": options(server)},
                   "tgt": {"path": "t", "backend": "responses", "options": {"file": str(tmp_path / "none.jsonl")}}},
        "roles": {"gpt4o": ["api"]}, "pairs": {"settings": ["gpt4o_self"]}, "prompts": {"train": {"source": "advbench"}},
        "generate": {"sources": ["api"], "overrides": {"api": {"num_samples": 0}}},
    })
    rd = RunDir(cfg.run_path).create()
    texts = ["ok alpha", "ok beta"]
    prompts = [{"prompt_id": prompt_id(t), "text": t} for t in texts]
    write_jsonl(rd.path("prompts", "train.jsonl"), prompts)
    server.healthy = True
    generate.generate_model(cfg, rd, "api", prompts, "cpu")
    assert sum(server.calls.values()) == 2
    plan = generate.model_plan(cfg, "api")
    new, old = (generate.model_inputs_hash(cfg, "api", prompts, plan, "cpu", every_setting=e) for e in (False, True))
    assert new != old
    rd.path("generate", "api.jsonl.inputs").write_text(old + "\n")  # as an earlier version left it
    server.calls.clear()
    stats = generate.generate_model(cfg, rd, "api", prompts, "cpu")
    assert sum(server.calls.values()) == 0 and stats["generated"] == 2
    assert rd.path("generate", "api.jsonl.inputs").read_text().strip() == new
    rd.path("generate", "api.jsonl.inputs").write_text("some other inputs\n")  # other inputs: asked again
    generate.generate_model(cfg, rd, "api", prompts, "cpu")
    assert sum(server.calls.values()) == 2
