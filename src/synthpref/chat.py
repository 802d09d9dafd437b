"""Turn chat messages into the prompt text a model was trained to continue.

The authors' code fed raw prompts to every model (no chat template); an instruction-tuned model
answers very differently with and without its template, so synthpref formats each model's
prompt the way that model expects. The rule, in order:

1. `models.<name>.options.prompt_format: plain` or `chat` forces a mode (`auto` is the default);
   `raw` (set by the generate stage for `generate.sampling.generation_prompt: raw`) is the
   authors' generation prompt: the user's text alone, tokenised without special tokens
   (generate.py:49-57, add_special_tokens=False). Training never uses raw (`prepare_tokenizer`
   applies the rule below as for auto), so a raw generation prompt and a chat-template training
   format combine, as in the authors' pipeline.
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

import json
from typing import Iterable, Literal

from .config import ModelSpec
from .errors import ConfigError

# Base (not instruction-tuned) checkpoints known to ship a chat template anyway.
BASE_MODELS = frozenset({"gemma-3-270m", "google/gemma-3-270m"})

PromptMode = Literal["chat", "plain", "raw"]


def prompt_format_option(spec: ModelSpec) -> str:
    value = spec.options.get("prompt_format", "auto")
    if value not in ("auto", "chat", "plain", "raw"):
        raise ConfigError(f"model '{spec.path}': options.prompt_format '{value}' is not valid "
                          "(auto | chat | plain | raw)")
    return value


def with_prompt_format(spec: ModelSpec, value: str) -> ModelSpec:
    """A copy of `spec` whose prompt_format option is `value`."""
    return spec.model_copy(update={"options": {**spec.options, "prompt_format": value}})


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_mode(tokenizer, spec: ModelSpec) -> PromptMode:
    """'chat', 'plain' or 'raw' for this model (see the module docstring for the rule)."""
    forced = prompt_format_option(spec)
    if forced in ("plain", "raw"):
        return forced
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


def format_raw(spec: ModelSpec, messages: Iterable[dict]) -> str:
    """The user turns as they are (the system text, if any, first): no template."""
    return format_plain(spec.model_copy(update={"plain_template": "{prompt}"}), messages)


def format_prompt(tokenizer, spec: ModelSpec, messages: Iterable[dict]) -> str:
    """The prompt text for `messages` (user turns, optionally a system turn) for this model."""
    mode = prompt_mode(tokenizer, spec)
    if mode == "plain":
        return format_plain(spec, messages)
    if mode == "raw":
        return format_raw(spec, messages)
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
    gets the tokenizer's usual special tokens (Gemma needs its <bos>); raw text gets none (the
    authors' add_special_tokens=False)."""
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


# --------------------------------------------------------------------------- training templates
def plain_chat_template(plain_template: str, bos: bool = False) -> str:
    """A Jinja chat template that renders `chat.format_plain`: system text, blank line, then the
    user turn inside the model's `plain_template`; an answer is followed by the eos token.

    TRL formats conversational pairs with `apply_chat_template`, so plain-mode models (base models
    such as Gemma-3-270M) get this template for training: the model is trained on exactly the
    prompt text generation used, and the prompt alone is a prefix of prompt + answer, which DPO's
    completion masking relies on. `bos`: start with the bos token, which the tokenizer adds to
    plain text but `apply_chat_template` does not.
    """
    if "{prompt}" not in plain_template:
        raise ConfigError(f"models.<target>.plain_template: must contain '{{prompt}}' (got {plain_template!r})")
    prefix, suffix = plain_template.split("{prompt}", 1)
    return (
        ("{{ bos_token }}" if bos else "")
        + "{% set pre = " + json.dumps(prefix) + " %}{% set suf = " + json.dumps(suffix) + " %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{{ pre + m['content'] + suf }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )

def prepare_tokenizer(spec: ModelSpec):
    """The tokenizer with the chat template training formats prompts with.

    Follows the generation rule (`chat.prompt_mode`), so DPO trains on the prompt text the target
    answered: chat mode uses the tokenizer's template (else `chat_template` from the config);
    plain mode (known base models, or no template) installs `plain_chat_template`. The template is
    saved with the trained model, so later stages render the same text.
    """
    from .models import load_tokenizer

    if prompt_format_option(spec) == "raw":  # a generation-only format: training follows the auto rule
        spec = with_prompt_format(spec, "auto")
    # DPOTrainer requires left padding (its collator and precompute assume it).
    tok = load_tokenizer(spec, padding_side="left")
    if prompt_mode(tok, spec) == "plain":
        ids = tok("x")["input_ids"]
        adds_bos = tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id
        tok.chat_template = plain_chat_template(spec.plain_template, bos=adds_bos)
    elif not has_template(tok):
        tok.chat_template = spec.chat_template
    return tok
