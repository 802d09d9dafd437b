"""Turn chat messages into the prompt text a model was trained to continue.

The authors' code fed raw prompts to every model (no chat template); an instruction-tuned model
answers very differently with and without its template, so synthpref formats each model's
prompt the way that model expects. The rule, in order:

1. `models.<name>.options.prompt_format: plain` or `chat` forces a mode (`auto` is the default).
2. auto, and the model is a known BASE model (`BASE_MODELS`): plain. A base checkpoint's tokenizer
   may still carry a template (Gemma 3 base repos ship the instruction template), but the base
   weights were never trained on it, so its turn markers are noise to them.
3. auto, and the tokenizer has its own chat template: that template, rendered by
   `apply_chat_template(tokenize=False, add_generation_prompt=True)`.
4. auto, no template in the tokenizer, `chat_template` set in the config: that template.
5. otherwise plain: `plain_template` with `{prompt}` replaced by the user's text.

The system prompt (`system_prompt`) becomes a system message in chat mode and a text prefix
(separated by a blank line) in plain mode. The packaged gemma-3-270m GGUF carries no
`tokenizer.chat_template` key (checked with gguf.GGUFReader), so it is plain under both rules.
"""

from __future__ import annotations

from typing import Iterable, Literal

from .config import ModelSpec
from .errors import ConfigError

# Base (not instruction-tuned) checkpoints known to ship a chat template anyway.
BASE_MODELS = frozenset({"gemma-3-270m", "google/gemma-3-270m"})

PromptMode = Literal["chat", "plain"]


def prompt_format_option(spec: ModelSpec) -> str:
    value = spec.options.get("prompt_format", "auto")
    if value not in ("auto", "chat", "plain"):
        raise ConfigError(f"model '{spec.path}': options.prompt_format '{value}' is not valid (auto | chat | plain)")
    return value


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_mode(tokenizer, spec: ModelSpec) -> PromptMode:
    """'chat' or 'plain' for this model (see the module docstring for the rule)."""
    forced = prompt_format_option(spec)
    if forced == "plain":
        return "plain"
    if forced == "chat":
        if not (has_template(tokenizer) or spec.chat_template):
            raise ConfigError(f"model '{spec.path}': prompt_format is 'chat' but its tokenizer has no chat template; "
                              "set models.<name>.chat_template or use prompt_format: plain")
        return "chat"
    if spec.path in BASE_MODELS:
        return "plain"
    return "chat" if has_template(tokenizer) or spec.chat_template else "plain"


def with_system(spec: ModelSpec, messages: Iterable[dict]) -> list[dict]:
    msgs = [dict(m) for m in messages]
    if spec.system_prompt and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": spec.system_prompt})
    return msgs


def format_plain(spec: ModelSpec, messages: Iterable[dict]) -> str:
    """plain_template filled with the user turns; the system text (if any) goes first."""
    msgs = with_system(spec, messages)
    system = "\n".join(m["content"] for m in msgs if m.get("role") == "system")
    user = "\n\n".join(m["content"] for m in msgs if m.get("role") == "user")
    text = spec.plain_template.replace("{prompt}", user)
    return f"{system}\n\n{text}" if system else text


def format_prompt(tokenizer, spec: ModelSpec, messages: Iterable[dict]) -> str:
    """The prompt text for `messages` (user turns, optionally a system turn) for this model."""
    if prompt_mode(tokenizer, spec) == "plain":
        return format_plain(spec, messages)
    msgs = with_system(spec, messages)
    template = None if has_template(tokenizer) else spec.chat_template
    # tokenize=False returns the text (tokenize=True would give a BatchEncoding in transformers 5).
    return tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True)


def user_message(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


# End-of-turn markers of common chat templates; a tokenizer's eos is not always its turn end.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def prompt_token_ids(tokenizer, spec: ModelSpec, messages: Iterable[dict]) -> list[int]:
    """Token ids of the formatted prompt. A chat template writes its own special tokens (BOS
    included where the model wants one), as apply_chat_template(tokenize=True) does; plain text
    gets the tokenizer's usual special tokens (Gemma needs its <bos>)."""
    text = format_prompt(tokenizer, spec, messages)
    return tokenizer(text, add_special_tokens=prompt_mode(tokenizer, spec) == "plain")["input_ids"]


def stop_token_ids(tokenizer, spec: ModelSpec, extra: Iterable[int] = ()) -> list[int]:
    """eos ids (tokenizer + `extra`, e.g. the generation config's), plus turn-end markers in chat mode."""
    ids = set(extra)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if prompt_mode(tokenizer, spec) == "chat":
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return sorted(ids)
