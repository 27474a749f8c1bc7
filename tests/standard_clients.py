"""How standard clients score a reward-model folder, run in a fresh process that never imports rmtrain.

`python standard_clients.py FOLDER CONVERSATIONS_JSON` prints one JSON object: for each client, the
score of each conversation (a list of {"role", "content"} messages, the answer to judge last).
Each client is the client's own code where it runs here, or its calls made exactly as its source
makes them where it does not install here:

- rewardbench_*: RewardBench v1 (`rewardbench` 0.1.4, scripts/run_rm.py, the default model config):
  `AutoModelForSequenceClassification.from_pretrained`, `pipeline("text-classification")` called with
  the kwargs run_rm.py passes, on `tokenizer.apply_chat_template(messages, tokenize=False)`. The
  package pins transformers==4.51.0, so its calls are made here with the installed transformers.
- trl_grpo: TRL's own `GRPOTrainer._calculate_rewards` (the installed trl), a trainer built with the
  folder as its reward model and a tiny policy; TRL loads the folder and tokenizer itself.
- openrlhf: OpenRLHF 0.11.2's `get_llm_for_sequence_regression` and `serve_rm` reading rule
  (openrlhf/models/model.py, openrlhf/cli/serve_rm.py): the module imports flash_attn at import
  time, so the same class construction, loading and forward are written out here. Not for
  InternLM2: OpenRLHF looks the trunk up in AutoModel's registry, which has no remote-code config.
  Normalisation applies OpenRLHF's rule with config.json's mean and std (see `openrlhf` below).
- vllm_last_token: vLLM's and SGLang's classify reading of a sequence classifier, one unpadded
  sequence tokenised with special tokens (their default for text input), the score head at the last
  token, no activation for `problem_type: "regression"`.
- internlm2_get_scores: InternLM2ForRewardModel's own get_scores / rank / compare.
"""

import json
import sys
import tempfile

import torch


def _trust_remote_code(folder: str) -> bool:
    with open(f"{folder}/config.json") as file:
        return "auto_map" in json.load(file)


def texts_of(tokenizer, conversations):
    return [tokenizer.apply_chat_template(messages, tokenize=False) for messages in conversations]


def rewardbench_v1(folder: str, conversations, padding_side: str) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    trust_remote_code = _trust_remote_code(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = padding_side
    model_kwargs = {"device_map": "cpu", "torch_dtype": torch.float32}
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, **model_kwargs, trust_remote_code=trust_remote_code
    )
    reward_pipe = pipeline("text-classification", model=model, tokenizer=tokenizer)
    if reward_pipe.tokenizer.pad_token_id is None:
        reward_pipe.model.config.pad_token_id = reward_pipe.tokenizer.eos_token_id
        reward_pipe.tokenizer.pad_token_id = reward_pipe.tokenizer.eos_token_id
    if reward_pipe.model.config.pad_token_id is None:
        reward_pipe.model.config.pad_token_id = reward_pipe.tokenizer.pad_token_id
    reward_pipeline_kwargs = {
        "batch_size": 3,  # several conversations of different lengths per padded batch
        "truncation": True,
        "padding": True,
        "max_length": 2048,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }
    results = reward_pipe(texts_of(tokenizer, conversations), **reward_pipeline_kwargs)
    return [result["score"] for result in results]


def pipeline_default_activation(folder: str, conversations) -> list[float]:
    """The text-classification pipeline without function_to_apply: the config's problem_type decides."""
    from transformers import AutoTokenizer, pipeline

    trust_remote_code = _trust_remote_code(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    scorer = pipeline("text-classification", model=folder, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    return [result["score"] for result in scorer(texts_of(tokenizer, conversations))]


def trl_grpo(folder: str, conversations) -> list[float]:
    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    # The policy only has to exist: its tokenizer is the folder's, its weights are never used.
    policy_tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(policy_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    prompts = [messages[:-1] for messages in conversations]
    completions = [messages[-1:] for messages in conversations]
    with tempfile.TemporaryDirectory() as output_dir:
        args = GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
            report_to=[], use_cpu=True, bf16=False, trust_remote_code=_trust_remote_code(folder),
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=LlamaForCausalLM(config),
            reward_funcs=folder,
            args=args,
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=policy_tokenizer,
        )
        inputs = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
        completion_ids = [[0] for _ in completions]
        rewards = trainer._calculate_rewards(inputs, prompts, completions, completion_ids)
    return rewards[:, 0].tolist()


def openrlhf(folder: str, conversations, normalize: bool) -> list[float]:
    import torch.nn as nn
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    # get_llm_for_sequence_regression(model_type="reward", normalize_reward=normalize, value_head_prefix="score")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    config.normalize_reward = normalize
    config._attn_implementation = "sdpa"  # OpenRLHF's default is flash_attention_2 (GPU only)
    value_head_prefix = getattr(config, "value_head_prefix", "score")
    base_class = AutoModel._model_mapping[type(config)]
    base_pretrained_class = base_class.__base__

    class RewardModel(base_pretrained_class):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_class(config))
            self.value_head_prefix = value_head_prefix
            setattr(self, value_head_prefix, nn.Linear(config.hidden_size, 1, bias=False))
            self.normalize_reward = config.normalize_reward
            # OpenRLHF copies config.mean/std into non-persistent buffers here; under transformers 5.x
            # from_pretrained builds the model on the meta device, so those buffers come back
            # uninitialised. Its rule, (reward - config.mean) / config.std, is applied from the config.
            self.mean, self.std = getattr(config, "mean", 0.0), getattr(config, "std", 1.0)
            self.post_init()

        def forward(self, input_ids, attention_mask):
            eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            outputs = getattr(self, self.base_model_prefix)(
                input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
            values = getattr(self, self.value_head_prefix)(outputs["last_hidden_state"]).squeeze(-1)
            reward = values.gather(dim=1, index=eos_indices).squeeze(1)
            if not self.training and self.normalize_reward:
                reward = (reward - self.mean) / self.std
            return reward

    model = RewardModel.from_pretrained(folder, config=config, trust_remote_code=True, torch_dtype=torch.float32)
    model.eval()
    # serve_rm: get_tokenizer(..., padding_side="left"), then tokenize_fn
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, use_fast=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(
        texts_of(tokenizer, conversations), return_tensors="pt", add_special_tokens=False, max_length=2048,
        padding=True, truncation=True,
    )  # fmt: skip
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"]).tolist()


def vllm_last_token(folder: str, conversations) -> list[float]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    assert config.problem_type == "regression", config.problem_type  # vLLM: identity activation, no sigmoid
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    scores = []
    with torch.no_grad():
        for text in texts_of(tokenizer, conversations):
            ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
            hidden = model.base_model(input_ids=ids).last_hidden_state
            scores.append(model.score(hidden[0, -1]).item())
    return scores


def internlm2_methods(folder: str, conversations) -> dict:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return {
        "class": type(model).__name__,
        "get_scores": model.get_scores(tokenizer, conversations),
        "get_score": model.get_score(tokenizer, conversations[0]),
        "rank": model.rank(tokenizer, conversations),
        "compare": model.compare(tokenizer, conversations[0], conversations[1]),
    }


def main(folder: str, conversations) -> dict:
    internlm2 = _trust_remote_code(folder)
    report = {
        "rewardbench_right_padding": rewardbench_v1(folder, conversations, "right"),
        "rewardbench_left_padding": rewardbench_v1(folder, conversations, "left"),
        "pipeline_default_activation": pipeline_default_activation(folder, conversations),
        "trl_grpo": trl_grpo(folder, conversations),
    }
    if internlm2:
        report["internlm2"] = internlm2_methods(folder, conversations)
    else:
        report["openrlhf"] = openrlhf(folder, conversations, normalize=False)
        report["openrlhf_normalized"] = openrlhf(folder, conversations, normalize=True)
        report["vllm_last_token"] = vllm_last_token(folder, conversations)
    report["rmtrain_imported"] = any(name == "rmtrain" or name.startswith("rmtrain.") for name in sys.modules)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
