"""The SmolLM2 builders' old import path, kept so configs written for earlier versions still load.

They live in `rmtrain.assets` (an offline asset cache, not a model).
"""

from rmtrain.assets import smollm2_135m_instruct, smollm2_135m_instruct_model, smollm2_135m_instruct_tokenizer

__all__ = ["smollm2_135m_instruct", "smollm2_135m_instruct_model", "smollm2_135m_instruct_tokenizer"]
