"""The lm-eval task config written into eval/<model>/general/<task>.json is the same in every run:
callables are named, never shown with their memory address."""

import json

from synthpref.stages.evaluate.general import _clean_config


def _doc_to_text(doc):
    return doc["q"]


def test_task_config_names_callables_without_addresses():
    conf = {"task": "arc", "metadata": {"doc_to_text": _doc_to_text, "fewshot": {"sampler": _doc_to_text}}}
    text = json.dumps(_clean_config(conf))
    assert "0x" not in text and "test_general_config._doc_to_text" in text
    assert _clean_config(conf) == _clean_config(dict(conf))
