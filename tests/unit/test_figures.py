"""Figures draw what the data hold: a missing cell is marked n/a, never a bar at 0."""

from __future__ import annotations

import math

from synthpref import figures


def _entry(fmt, value):
    return {"judge": "kw", "set": "advbench", "format": fmt, "value": value, "ci_low": value - 0.1,
            "ci_high": value + 0.1, "n": 100}


def test_a_setting_without_an_entry_gets_no_bar_and_an_n_a_mark(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn, marks = [], []
    real_bar, real_text = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.text

    def bar(self, x, h, *a, **k):
        drawn.append(list(h))
        return real_bar(self, x, h, *a, **k)

    def text(self, x, y, s, *a, **k):
        marks.append(s)
        return real_text(self, x, y, s, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    evals = {"sft": {"safety": [_entry("alpaca", 0.5), _entry("chat", 0.4)]},
             "self_rm": {"safety": [_entry("alpaca", 0.3)]}}  # no chat-format entry
    path = figures.fig_asr(evals, tmp_path, "advbench", "kw", {}, "non-refusal rate")
    assert path.read_bytes()[:4] == b"\x89PNG"
    alpaca, chat = drawn
    assert alpaca == [0.5, 0.3] and chat[0] == 0.4 and math.isnan(chat[1])
    assert marks.count("n/a") == 1
