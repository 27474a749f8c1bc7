# Reward model from InternLM2-chat-1.8B-SFT on UltraFeedback (argilla's cleaned binarized set), packed pairs.
# Loss: the InternLM2 report's focal ranking loss with a log-barrier penalty on the scores.
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer
from torch.optim import AdamW
from transformers import AutoModel, AutoTokenizer

from rmtrain.data import LengthGroupedSampler, build_preference_dataset, orpo_dpo_mix_40k_map_fn, preference_collate_fn
from rmtrain.engine import AutocastOptimWrapper, LinearWarmupLR, RewardLogProcessor, TrainLoop
from rmtrain.model import RewardModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
pretrained_model_name_or_path = "internlm/internlm2-chat-1_8b-sft"
reward_token_id = 92527  # [UNUSED_TOKEN_130]
use_varlen_attn = True  # pack whole pairs into padding-free rows of max_packed_length tokens
sequence_parallel_size = 1  # >1: each row split over this many processes (Ulysses); see docs/en/distributed.md
loss_type = "focal"
penalty_type = "log_barrier"
penalty_weight = 0.01
value_head_init = "zeros"  # XTuner's zero head (rmtrain's default is "normal"; docs/quality.md measures both)

# Data
dataset_name_or_path = "argilla/ultrafeedback-binarized-preferences-cleaned"
max_length = 2048
max_packed_length = max_length * 2  # XTuner drops pairs longer than a bin; here every pair fits and trains

# Scheduler & Optimizer
batch_size = 1  # packed bins per device (use_varlen_attn=True); pairs per device when False
accumulative_counts = 16
dataloader_num_workers = 0
max_epochs = 1  # more than one epoch tends to overfit reward models
optim_type = AdamW
lr = 2e-5
betas = (0.9, 0.999)
weight_decay = 0.0
max_norm = 1.0
warmup_ratio = 0.03
mixed_precision = "auto"  # bf16 autocast where the device supports it

# Save
save_steps = 500
save_total_limit = 2  # maximum checkpoints to keep (-1 means unlimited)
log_interval = 10

#######################################################################
#            PART 2  Model & Tokenizer                                #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    trust_remote_code=True,  # the published InternLM2 tokenizer is defined by code in its folder
    padding_side="right",
)

model = dict(
    type=RewardModel,  # reward_token_id and use_varlen_attn come from the data set's config
    loss_type=loss_type,
    penalty_type=penalty_type,
    penalty_weight=penalty_weight,
    value_head_init=value_head_init,
    use_activation_checkpointing=True,
    llm=dict(
        type=AutoModel.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        dtype="float32",  # fp32 master weights; the forward runs under bf16 autocast
        attn_implementation="sdpa",
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataset = dict(
    type=build_preference_dataset,
    dataset=dict(type=load_dataset, path=dataset_name_or_path),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=orpo_dpo_mix_40k_map_fn,
    is_dpo=False,
    is_reward=True,
    reward_token_id=reward_token_id,
    num_proc=32,
    use_varlen_attn=use_varlen_attn,
    max_packed_length=max_packed_length,
    pack_seed=0,
    shuffle_before_pack=True,
)

train_dataloader = dict(
    batch_size=1 if use_varlen_attn else batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    # Packed bins are shuffled as they are; padded batches group pairs of similar length.
    sampler=dict(type=DefaultSampler, shuffle=True)
    if use_varlen_attn
    else dict(type=LengthGroupedSampler, batch_size=batch_size),
    collate_fn=dict(type=preference_collate_fn),
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
randomness = dict(seed=None, deterministic=False)  # None: a random seed, saved in checkpoints for --resume
