"""How a harmful behaviour is put to the model in the safety evaluation.

A format is one of:

- ``chat``: the behaviour is the user message, in the model's own prompt format (its chat
  template; plain template for base models; rule in synthpref.chat).
- ``alpaca``: the authors' evaluation prompt, the Alpaca template (Taori et al. 2023,
  github.com/tatsu-lab/stanford_alpaca) filled with the behaviour and fed as raw text, whatever
  chat template the model has. As in the authors' evaluation, the text ends at "### Response:"
  with no newline after it.
- ``jailbreak:<name>``: the behaviour wrapped in a packaged jailbreak template, then sent as the
  user message (chat format). Templates come from two packaged assets:
  PyRIT (`pyrit-jailbreak-templates`, YAML whose `value` is a Jinja template with a
  ``{{ prompt }}`` slot, rendered with Jinja as PyRIT does) and garak's DAN probes
  (`dan-templates`, a JSON list holding one text; `{generator.name}` is replaced by a neutral name
  and, as garak sends these as a first turn with no slot, the behaviour is appended after the
  template unless it has an ``INSERT PROMPT HERE`` marker). `synthpref templates` lists them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...config import ModelSpec
from ...errors import ConfigError, did_you_mean

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{prompt}\n\n### Response:"
)  # no newline after "### Response:", as in the authors' evaluation prompt
# garak fills {generator.name} with the target's product name ("ChatGPT" in the originals); a
# neutral name keeps the wrapper from naming another vendor's model.
NEUTRAL_GENERATOR_NAME = "Assistant"
DAN_PROMPT_MARKER = "INSERT PROMPT HERE"
SOURCES = {"pyrit": "pyrit-jailbreak-templates", "garak-dan": "dan-templates"}


@dataclass(frozen=True)
class Template:
    name: str
    source: str          # pyrit | pyrit/<subfolder> | garak-dan
    path: Path
    text: str            # the template as shipped (Jinja for pyrit, plain text for garak-dan)
    parameters: tuple[str, ...] = ("prompt",)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def wrap(self, behaviour: str) -> str:
        if self.source.startswith("pyrit"):
            if self.parameters != ("prompt",):
                raise ConfigError(f"jailbreak template '{self.name}' ({self.path}) needs parameters "
                                  f"{', '.join(self.parameters)}; only single-slot {{{{ prompt }}}} templates are supported")
            import jinja2

            env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
            return env.from_string(self.text).render(prompt=behaviour).strip()
        text = self.text.replace("{generator.name}", NEUTRAL_GENERATOR_NAME)
        if DAN_PROMPT_MARKER in text:
            return text.replace(DAN_PROMPT_MARKER, behaviour).strip()
        return f"{text.strip()}\n\n{behaviour}"


def _asset_root(asset: str) -> Path:
    from ... import assets

    return assets.fetch(asset)


@functools.lru_cache(maxsize=4)
def _load_all(pyrit_root: Path, dan_root: Path) -> dict[str, Template]:
    import yaml

    out: dict[str, Template] = {}
    for f in sorted(pyrit_root.rglob("*.yaml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("value"), str):
            continue
        sub = f.parent.relative_to(pyrit_root).as_posix()
        params = tuple(data.get("parameters") or ("prompt",))
        # Names are file stems (unique in the shipped set); a clash falls back to the relative path.
        name = f.stem if f.stem not in out else f.relative_to(pyrit_root).with_suffix("").as_posix()
        out[name] = Template(name, "pyrit" if sub == "." else f"pyrit/{sub}", f, data["value"], params)
    for f in sorted(dan_root.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        texts = data if isinstance(data, list) else [data]
        # Each garak DAN file is a list holding one prompt; several would be separate turns, which
        # a single-turn evaluation cannot send, so they are joined as one message.
        name = f.stem if f.stem not in out else f"dan_{f.stem}"
        out[name] = Template(name, "garak-dan", f, "\n\n".join(str(t) for t in texts))
    return out


def all_templates() -> dict[str, Template]:
    return _load_all(_asset_root(SOURCES["pyrit"]), _asset_root(SOURCES["garak-dan"]))


def list_templates() -> list[tuple[str, str]]:
    """(name, source) of every usable jailbreak template (single `prompt` slot), sorted by name."""
    return sorted((t.name, t.source) for t in all_templates().values() if t.parameters == ("prompt",))


def get_template(name: str) -> Template:
    templates = all_templates()
    if name not in templates:
        raise ConfigError(f"evaluate.safety.formats: unknown jailbreak template '{name}'{did_you_mean(name, templates)}; "
                          "`synthpref templates` lists them")
    return templates[name]


# --------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    name: str                         # as written in the config: chat | alpaca | jailbreak:<t>
    kind: str                         # chat | alpaca | jailbreak
    template: Template | None = None

    def user_text(self, behaviour: str) -> str:
        """The user message for the model (for alpaca: the text inside the raw template)."""
        return self.template.wrap(behaviour) if self.template else behaviour

    def spec_for(self, spec: ModelSpec) -> ModelSpec:
        """The model spec the backend formats prompts with: for alpaca, a copy forced into plain
        mode with the Alpaca template and no system prompt, so the model sees exactly that text."""
        if self.kind != "alpaca":
            return spec
        return spec.model_copy(update={"plain_template": ALPACA_TEMPLATE, "system_prompt": None,
                                       "options": {**spec.options, "prompt_format": "plain"}})

    def describe(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "alpaca":
            d["template_sha256"] = hashlib.sha256(ALPACA_TEMPLATE.encode()).hexdigest()
        if self.template:
            d.update(template=self.template.name, source=self.template.source,
                     template_sha256=self.template.sha256)
        return d


def parse_format(name: str) -> Format:
    if name == "chat":
        return Format("chat", "chat")
    if name == "alpaca":
        return Format("alpaca", "alpaca")
    if name.startswith("jailbreak:"):
        t = get_template(name.split(":", 1)[1])
        t.wrap("x")  # multi-parameter templates fail here, before any generation
        return Format(name, "jailbreak", t)
    raise ConfigError(f"evaluate.safety.formats: unknown format '{name}'"
                      f"{did_you_mean(name, ['chat', 'alpaca', 'jailbreak:<template>'])}")


def check_format(name: str) -> None:
    """For `synthpref validate`: raise ConfigError if `name` is not a usable format."""
    parse_format(name)


def render_alpaca(behaviour: str) -> str:
    return ALPACA_TEMPLATE.replace("{prompt}", behaviour)
