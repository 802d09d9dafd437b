"""Responses from a file instead of a model (`backend: responses`): e.g. the GPT-4o answers the
authors released (cacayaya/More-is-Less, gen-data/gpt4o_generated_10k/{train,test}.jsonl, fields
prompt/response), so the GPT-4o role needs no API key.

The source is `options.file` or else the model's `path`: a local JSONL file or an http(s) URL
(read once, into memory). Each request is answered with the response whose prompt equals the
request's user text after normalisation (Unicode NFKC, whitespace runs collapsed, ends stripped).
The file holds one answer per prompt, so it serves greedy requests only (set the model's
`num_samples: 0`). A prompt with no answer in the file gets no record: it is counted, reported in
generate/stats.json (`unmatched`) and logged, and the pair settings that need it skip that prompt.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path
from typing import Iterator

from pydantic import Field

from ...config import ModelSpec
from ...errors import BackendError, ConfigError, DataError
from .base import GenerationBackend, GenParams, GenRequest, GenResult

log = logging.getLogger(__name__)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).split())


def read_source(ref: str, timeout_s: float = 60.0) -> str:
    if ref.startswith(("http://", "https://")):
        import httpx

        try:
            r = httpx.get(ref, timeout=timeout_s, follow_redirects=True)
            r.raise_for_status()
        except Exception as e:
            raise BackendError(f"responses: could not download {ref} ({type(e).__name__}); download it and set "
                               "the model's path to the local file") from None
        return r.text
    p = Path(ref).expanduser()
    if not p.is_file():
        raise ConfigError(f"responses: file '{ref}' does not exist")
    return p.read_text(encoding="utf-8")


def load_answers(text: str, prompt_field: str, response_field: str, where: str) -> dict[str, str]:
    """normalised prompt -> response; the first answer wins when a prompt repeats."""
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{i}: not JSON ({e.msg})") from None
        if prompt_field not in row or response_field not in row:
            raise DataError(f"{where}:{i}: needs fields '{prompt_field}' and '{response_field}' "
                            f"(has: {', '.join(row)}); set options.prompt_field / response_field")
        out.setdefault(normalise(row[prompt_field]), str(row[response_field]))
    return out


class ResponsesFileBackend(GenerationBackend):
    NEEDS_LOCAL_WEIGHTS = False
    SECONDS_PER_CALL = 0.0

    @classmethod
    def check_spec(cls, spec) -> tuple[str, str] | None:
        field = "options.file" if spec.options.get("file") is not None else "path"
        ref = spec.options.get("file") or spec.path
        if not isinstance(ref, str):
            return field, f"responses file {ref!r} is not a path; give a local JSONL or an http(s) URL"
        if ref.startswith(("http://", "https://")) or Path(ref).expanduser().is_file():
            return None
        return field, f"responses file '{ref}' does not exist (a local JSONL or an http(s) URL)"
    class Options(GenerationBackend.Options):
        file: str | None = Field(None, description="local JSONL or http(s) URL (default: the model's path)")
        prompt_field: str = Field("prompt", description="field holding the prompt text")
        response_field: str = Field("response", description="field holding the answer")

    def __init__(self, spec: ModelSpec, device: str = "cpu", **kwargs):
        super().__init__(spec, device)
        self.source = self.options.file or spec.path
        self.answers = load_answers(read_source(self.source), self.options.prompt_field,
                                    self.options.response_field, self.source)
        self.matched = 0
        self.unmatched: list[str] = []

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        if any(not r.greedy for r in requests):
            raise ConfigError(f"model '{self.spec.path}' (backend responses) holds one answer per prompt: set "
                              "generate.overrides.<model>.num_samples: 0")
        for r in requests:
            user = "\n\n".join(m["content"] for m in r.messages if m.get("role") == "user")
            text = self.answers.get(normalise(user))
            if text is None:
                self.unmatched.append(r.key)
                continue
            self.matched += 1
            yield GenResult(r.key, text.strip(), 0, "stop")
        if self.unmatched:
            log.warning("responses %s: %d of %d prompts have no answer in the file (no record written)",
                        self.source, len(self.unmatched), len(requests))

    def report(self) -> dict:
        return {"source": self.source, "answers_in_file": len(self.answers), "matched": self.matched,
                "unmatched": len(self.unmatched)}
