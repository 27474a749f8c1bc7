"""InternLM2 for rmtrain: config and models, registered with transformers' Auto classes.

After this import, `AutoConfig`/`AutoModel`/`AutoModelForCausalLM.from_pretrained` load a folder
whose config says `"model_type": "internlm2"` with these classes, without `trust_remote_code`
(transformers prefers registered local classes over a folder's `auto_map`).

`INTERNLM2_MODELING_FILES` are the two self-contained source files to copy next to exported
weights, so the export loads with `trust_remote_code=True` where rmtrain is not installed.
"""

import os

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from rmtrain.model.internlm2.configuration_internlm2 import InternLM2Config
from rmtrain.model.internlm2.modeling_internlm2 import (
    InternLM2ForCausalLM,
    InternLM2ForRewardModel,
    InternLM2Model,
    InternLM2PreTrainedModel,
)

__all__ = [
    "INTERNLM2_MODELING_FILES",
    "InternLM2Config",
    "InternLM2ForCausalLM",
    "InternLM2ForRewardModel",
    "InternLM2Model",
    "InternLM2PreTrainedModel",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
INTERNLM2_MODELING_FILES: tuple[str, ...] = (
    os.path.join(_HERE, "configuration_internlm2.py"),
    os.path.join(_HERE, "modeling_internlm2.py"),
)

AutoConfig.register(InternLM2Config.model_type, InternLM2Config, exist_ok=True)
AutoModel.register(InternLM2Config, InternLM2Model, exist_ok=True)
AutoModelForCausalLM.register(InternLM2Config, InternLM2ForCausalLM, exist_ok=True)
