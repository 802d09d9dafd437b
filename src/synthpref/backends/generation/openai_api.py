"""OpenAI-compatible chat API backend (OpenAI, vLLM/llama.cpp/TGI servers, proxies), over httpx.

`POST {api_base}/chat/completions` with the model name in `models.<name>.path`; `api_base`
includes the version prefix, as in the OpenAI SDK's `base_url` (default
https://api.openai.com/v1). Requests run on `max_concurrency` threads; 429, 5xx, timeouts,
connection errors and unparseable replies are retried with exponential backoff
(`backoff_s * 2**attempt`, capped, or the server's Retry-After when longer). Other 4xx replies
(bad key, unknown model) fail at once.

Refusals by the API itself are answers, not failures: a 400 whose error names a content filter or
policy, a reply whose `finish_reason` is `content_filter`, one that carries a `refusal` message,
or one whose `content` is null. Each comes back at once (no retry) as a result with
`refused=True` (text: the refusal message, or empty), and the generate stage records it with
`refused_by_api: true`, so a re-run never asks for that prompt again. The API key is read from the environment variable named by
`api_key_env` and only ever placed in the Authorization header: it is never logged, stored in a
record or echoed in an error (server text is redacted before it is quoted).

Seeds: each request sends its record's `seed`; OpenAI documents seeded sampling as best-effort,
so API texts are reproducible only as far as the server allows (records are cached, so a resumed
run never re-asks for finished ones).
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from ...chat import with_system
from ...config import ModelSpec
from ...errors import BackendError, ConfigError
from .base import GenerationBackend, GenParams, GenRequest, GenResult

# Words in a 400 reply that mean "the provider's safety system declined this prompt".
REFUSAL_MARKERS = ("content_filter", "content filter", "content_policy", "content policy", "responsibleai",
                   "safety system", "flagged")
RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class OpenAIBackend(GenerationBackend):
    NEEDS_LOCAL_WEIGHTS = False
    COSTS_MONEY = True
    SECONDS_PER_CALL = 2.0
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        api_base: str = Field("https://api.openai.com/v1", description="server URL up to and including /v1")
        api_key_env: str | None = Field("OPENAI_API_KEY", description="env var holding the key; null: no auth (local server)")
        max_concurrency: int = Field(8, ge=1, description="requests in flight at once")
        timeout_s: float = Field(120.0, gt=0, description="per-request timeout")
        max_retries: int = Field(6, ge=0, description="retries after the first attempt (429/5xx/timeout/bad JSON)")
        backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
        max_backoff_s: float = Field(60.0, ge=0, description="cap on one retry delay")
        max_tokens_field: str = Field("max_tokens", description="'max_completion_tokens' for newer OpenAI models")
        send_seed: bool = Field(True, description="send the per-record seed")
        send_repetition_penalty: bool = Field(
            False, description="send repetition_penalty (vLLM/llama.cpp servers accept it; OpenAI does not)")
        extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body")

    RUNTIME_OPTIONS = frozenset({"api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_s",
                                 "max_backoff_s"})

    def __init__(self, spec: ModelSpec, device: str = "cpu", **kwargs):
        super().__init__(spec, device)
        import httpx

        o = self.options
        headers = {"Content-Type": "application/json"}
        self._secret = None
        if o.api_key_env:
            key = os.environ.get(o.api_key_env)
            if not key:
                raise ConfigError(f"model '{spec.path}': environment variable {o.api_key_env} is not set; export the "
                                  "API key there (or set options.api_key_env: null for a server without auth)")
            self._secret = key
            headers["Authorization"] = f"Bearer {key}"
        self.url = o.api_base.rstrip("/") + "/chat/completions"
        limits = httpx.Limits(max_connections=o.max_concurrency, max_keepalive_connections=o.max_concurrency)
        self.client = httpx.Client(headers=headers, timeout=o.timeout_s, limits=limits)
        self._stop = threading.Event()

    # -- one request
    def body(self, req: GenRequest, params: GenParams) -> dict:
        o = self.options
        b: dict[str, Any] = {"model": self.spec.path, "messages": with_system(self.spec, req.messages),
                             o.max_tokens_field: params.max_new_tokens,
                             "temperature": 0.0 if req.greedy else params.temperature,
                             "top_p": 1.0 if req.greedy else params.top_p}
        if o.send_seed:
            b["seed"] = req.seed
        if o.send_repetition_penalty:
            # greedy: none, as the authors' greedy pass (GenParams.penalties)
            b["repetition_penalty"] = params.penalties(req.greedy)[0]
        return {**b, **o.extra_body}

    def _redact(self, text: str) -> str:
        text = " ".join(str(text).split())[:200]
        return text.replace(self._secret, "***") if self._secret else text

    def _fail(self, why: str) -> BackendError:
        return BackendError(f"openai backend: model '{self.spec.path}' at {self.options.api_base}: {why}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        o = self.options
        d = min(o.max_backoff_s, o.backoff_s * 2 ** attempt)
        if retry_after:
            try:
                d = max(d, min(float(retry_after), o.max_backoff_s))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return d * (1 + 0.1 * random.random())  # jitter so concurrent retries spread out

    def request(self, req: GenRequest, params: GenParams) -> GenResult:
        import httpx

        o = self.options
        last = "no attempt made"
        for attempt in range(o.max_retries + 1):
            if self._stop.is_set():
                raise self._fail("cancelled after another request failed")
            retry_after = None
            try:
                r = self.client.post(self.url, json=self.body(req, params))
            except httpx.TimeoutException:
                last = f"timed out after {o.timeout_s:g}s"
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__})"
            else:
                if r.status_code in RETRY_STATUS:
                    last = f"HTTP {r.status_code}"
                    retry_after = r.headers.get("retry-after")
                elif r.status_code == 400 and self._is_refusal(r):
                    return GenResult(req.key, "", 0, "refused", refused=True)
                elif r.status_code >= 400:
                    raise self._fail(f"HTTP {r.status_code} ({self._redact(r.text)}); not retried, check the "
                                     f"model name and the key in ${o.api_key_env}")
                else:
                    parsed = self._parse(req, r)
                    if parsed is not None:
                        return parsed
                    last = f"HTTP {r.status_code} with a malformed reply ({self._redact(r.text)[:80]})"
            if attempt < o.max_retries:
                self._stop.wait(self._delay(attempt, retry_after))  # wakes early if cancelled
        raise self._fail(f"{last} after {o.max_retries + 1} attempt(s)")

    @staticmethod
    def _is_refusal(r) -> bool:
        """A 400 that is the provider's content policy declining the prompt (not a malformed request)."""
        text = r.text.lower()
        return any(w in text for w in REFUSAL_MARKERS)

    @staticmethod
    def _parse(req: GenRequest, r) -> GenResult | None:
        try:
            data = r.json()
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        refusal = message.get("refusal")
        if choice.get("finish_reason") == "content_filter" or isinstance(refusal, str) or text is None:
            return GenResult(req.key, (refusal or "").strip() if isinstance(refusal, str) else "", 0, "refused",
                             refused=True)
        if not isinstance(text, str):
            return None
        usage = data.get("usage") or {}
        # completion_tokens when the server reports usage; else a whitespace-token estimate.
        n = usage.get("completion_tokens")
        n = int(n) if isinstance(n, int) else len(text.split())
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return GenResult(req.key, text.strip(), n, finish)

    # -- many requests
    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.options.max_concurrency, thread_name_prefix="openai")
        try:
            pending = {pool.submit(self.request, r, params) for r in requests}
            error: BaseException | None = None
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is None:
                        yield f.result()  # caller records it now, so a later failure loses nothing
                    elif error is None:
                        error = f.exception()
                if error is not None:
                    # Stop new attempts, let in-flight ones finish, hand back what succeeded.
                    self._stop.set()
                    for f in pending:
                        f.cancel()
                    for f in pending:
                        if not f.cancelled() and f.exception() is None:
                            yield f.result()
                    raise error
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.client.close()
