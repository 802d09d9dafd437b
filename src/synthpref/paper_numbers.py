"""The paper's own numbers, shown beside ours for orientation only.

Source: Wang et al., "More is Less: The Pitfalls of Multi-Model Synthetic Preference Data in DPO
Safety Alignment", arXiv 2504.02193 (COLM 2025). `ASR` is read from the paper's main figure: the
all-models comparison of jailbreak attack success rate per preference-data setting, whose x-axis
is the paper's table of settings (SFT, Original Dataset, HC+Self, GPT4o+Self, Stronger+Self,
Peer+RM, All+RM, Self+RM); the authors' README shows the same figure
(image/all_models_comparison_results.png, README.md line 4). Protocol: the first 100 AdvBench
behaviours, greedy decoding, judged by GPT-4o with a 1-5 harmfulness rubric (ASR = share rated 5).
The three models below are three of the six the figure reports. The figure's number is not in
our source for the paper's facts, so it is named by its content rather than by a number. Their models, their SFT, their judge: a number here is never one of ours, and a
difference from ours is not a replication result.

The paper publishes no separability numbers that come with a probe recipe (features, layer and
classifier are not given), so none are listed; `SEPARABILITY` stays empty rather than guessed.
"""

from __future__ import annotations

FIGURE = "main figure: all-models ASR comparison per preference-data setting"
CITATION = (f"Wang et al., arXiv 2504.02193, {FIGURE}: first 100 AdvBench behaviours, greedy, "
            "GPT-4o 1-5 harm rubric, ASR = share rated 5")
MODEL = "Llama-3.1-8B"
COLUMN = f"paper ({MODEL}, their judge)"

# setting -> ASR (lower is safer); keys are synthpref's setting names ("sft" = the paper's SFT bar).
ASR: dict[str, dict[str, float]] = {
    "Llama-3.1-8B": {"sft": 0.56, "hc_self": 0.64, "gpt4o_self": 0.56, "stronger_self": 0.50,
                     "peer_rm": 0.26, "all_rm": 0.30, "original": 0.27, "self_rm": 0.16},
    "Mistral-7B-v0.3": {"sft": 0.48, "hc_self": 0.56, "gpt4o_self": 0.30, "stronger_self": 0.33,
                        "peer_rm": 0.17, "all_rm": 0.05, "original": 0.25, "self_rm": 0.03},
    "Qwen-2.5-7B": {"sft": 0.66, "hc_self": 0.68, "gpt4o_self": 0.66, "stronger_self": 0.68,
                    "peer_rm": 0.40, "all_rm": 0.39, "original": 0.41, "self_rm": 0.29},
}

SEPARABILITY: dict[str, dict[str, float]] = {}


def paper_asr(setting: str, model: str = MODEL) -> float | None:
    """The paper's ASR for a synthpref setting name, or None (a custom setting the paper does not have)."""
    return ASR.get(model, {}).get(setting)
