# SmolLM2-135M-Instruct reward model on the real UltraFeedback sample (998 usable pairs of
# ../shared/data/ultrafeedback-binarized-sample/train_clean.jsonl.gz), one epoch, packed, on CPU.
# Not a shipped recipe: it measures what the model reaches on real data; tools/accuracy/run.sh trains,
# exports and evaluates it (on the sample's eval file and on HH-RLHF helpful-base). Run from the repo root.
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer
from torch.optim import AdamW

from rmtrain.assets import smollm2_135m_instruct_model, smollm2_135m_instruct_tokenizer
from rmtrain.data import build_preference_dataset, load_jsonl_dataset, preference_collate_fn, string_preference_map_fn
from rmtrain.engine import AutocastOptimWrapper, LinearWarmupLR, RewardLogProcessor, TrainLoop
from rmtrain.model import RewardModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
# '<empty_output>': a Jupyter-notebook marker of the code data format that SmolLM2's tokenizer inherited.
# Chat text never contains it and the chat template never writes it; its embedding is one of the
# untrained ones (the same vector as several other unused markers), so it has no meaning to unlearn.
# It is none of the tokenizer's pad and eos ('<|im_end|>', id 2), bos ('<|im_start|>', 1) or unk (0).
reward_token_id = 16
pad_token_id = 2  # '<|im_end|>', SmolLM2's pad token; padding is masked, scores are read at the reward token
use_varlen_attn = True  # UltraFeedback lengths vary widely: packing wastes no compute on padding
loss_type = "ranking"
penalty_type = "log_barrier"
penalty_weight = 0.01

# Data
data_seed = 0
max_length = 1024
max_packed_length = 4096  # about 3.8 pairs per bin on this data
train_file = "../shared/data/ultrafeedback-binarized-sample/train_clean.jsonl.gz"  # relative to the repo root

# Scheduler & Optimizer
batch_size = 1  # packed bins per device
accumulative_counts = 2  # about 7.5 pairs per optimizer step
dataloader_num_workers = 0
max_epochs = 1
optim_type = AdamW
lr = 3e-5  # full fine-tuning of a pretrained model: small steps, after a short warm-up
betas = (0.9, 0.999)
weight_decay = 0.0
max_norm = 1.0
warmup_ratio = 0.05
mixed_precision = "auto"  # bf16 autocast where the device supports it

# Save
save_steps = 500  # only the last iteration is saved (265 iterations)
save_total_limit = 1  # a checkpoint with optimizer state is ~1.6 GB
log_interval = 10

#######################################################################
#            PART 2  Model & Tokenizer                                #
#######################################################################
# Both build the converted folder on first use (see rmtrain.assets); for a model folder of
# your own use dict(type=AutoTokenizer.from_pretrained / AutoModel.from_pretrained,
# pretrained_model_name_or_path=...) as in the other recipes.
tokenizer = dict(type=smollm2_135m_instruct_tokenizer, padding_side="right")

model = dict(
    type=RewardModel,  # reward_token_id and use_varlen_attn come from the data set's config
    loss_type=loss_type,
    penalty_type=penalty_type,
    penalty_weight=penalty_weight,
    use_activation_checkpointing=False,
    llm=dict(
        type=smollm2_135m_instruct_model,  # LlamaModel: the chat model without its LM head
        dtype="float32",  # fp32 master weights; the forward runs under bf16 autocast
        attn_implementation="sdpa",
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataset = dict(
    type=build_preference_dataset,
    dataset=dict(type=load_jsonl_dataset, data_files=train_file),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=string_preference_map_fn,
    skip_bad_records=True,
    max_packed_length=max_packed_length,
    pack_seed=data_seed,
    is_dpo=False,
    is_reward=True,
    reward_token_id=reward_token_id,
    num_proc=1,
    use_varlen_attn=use_varlen_attn,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=preference_collate_fn, pad_token_id=pad_token_id),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AutocastOptimWrapper,
    dtype=mixed_precision,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)

param_scheduler = [
    dict(
        type=LinearWarmupLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = []

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="nccl")
)

# Scalars go to <work_dir>/<timestamp>/vis_data/scalars.json and to TensorBoard event files.
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardVisBackend)])
log_processor = dict(type=RewardLogProcessor, by_epoch=False, window_size=log_interval)
log_level = "INFO"
randomness = dict(seed=42, deterministic=False)
