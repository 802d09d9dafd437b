"""Stage: supervised fine-tuning of the base model, before any response is generated.

The paper's pipeline: base model -> SFT (UltraChat, then safety SFT data) -> generation, probe and
DPO all from that SFT model. With `train.sft.enabled`, this stage runs TRL's SFTTrainer on each
`train.sft.datasets` entry in order (each run continues from the previous one's weights) and leaves
the final model in train/sft/model/; the generate stage then answers with it as the target ("Self"
responses are on-policy for the model being DPO-trained), the probe reads its hidden states, DPO
starts from it and the evaluate stage calls it 'sft'. Without SFT the stage records that it was
skipped and the target model is used as configured.

Outputs: train/sft/ (model/, checkpoints/, metrics.jsonl, done.json), as the train stage's runs.
"""

from __future__ import annotations

from ..config import StudyConfig
from ..rundir import RunDir, read_json


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    if not cfg.train.sft.enabled:
        return {"skipped": True, "reason": "train.sft.enabled is false: generation and DPO use the target as configured"}
    from . import train

    rd.stage("train")
    if cfg.train.launcher == "accelerate":
        train.resolve_accelerate_config(cfg.train.accelerate_config)  # fail before any compute
        h = train.sft_inputs_hash(cfg)
        res = ({**read_json(rd.path("train", train.SFT_NAME, "done.json")), "skipped": True}
               if train.is_done(rd, train.SFT_NAME, h) else train._launch(cfg, rd, train.SFT_NAME, h))
    else:
        res = train.train_sft(cfg, rd)
    return {"sft": train._summary_row(res), "model": f"train/{train.SFT_NAME}/model"}


def policy_spec(cfg: StudyConfig, rd: RunDir, name: str):
    """The spec a stage should load for model `name`: for the target with SFT enabled, the SFT
    model (train/sft/model, same backend and prompt settings); otherwise models.<name> as written."""
    if name == cfg.target and cfg.train.sft.enabled:
        from ..errors import DataError
        from .train import SFT_NAME, start_model_spec, trained_model_dir

        if not trained_model_dir(rd, SFT_NAME).is_dir():
            raise DataError(f"{trained_model_dir(rd, SFT_NAME)}: no SFT model yet; run `synthpref sft` first "
                            "(train.sft.enabled is true, so the target answers as its SFT model)")
        return start_model_spec(cfg, rd)
    return cfg.models[name]


def policy_ref(cfg: StudyConfig, name: str) -> str | None:
    """What identifies the SFT weights in a cache key (None when `name` is used as written)."""
    if name == cfg.target and cfg.train.sft.enabled:
        from .train import sft_inputs_hash

        return sft_inputs_hash(cfg)
    return None
