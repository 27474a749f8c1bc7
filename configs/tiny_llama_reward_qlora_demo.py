# Offline demo of QLoRA: LoRA adapters on a 4-bit (nf4, double quantisation) frozen trunk, the value head trained in full: a small
# Llama with seeded random weights (saved once as a folder, the base model the adapters belong to)
# learns generated preferences on CPU in about a minute. Nothing is downloaded.
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR
from mmengine.runner import ValLoop
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer
from peft import LoraConfig
from torch.optim import AdamW
from transformers import BitsAndBytesConfig

from rmtrain.assets import tiny_llama_base_model
from rmtrain.data import (
    LengthGroupedSampler,
    build_demo_preference_data,
    build_demo_tokenizer,
    build_preference_dataset,
    preference_collate_fn,
)
from rmtrain.engine import AutocastOptimWrapper, LinearWarmupLR, RewardLogProcessor, TrainLoop
from rmtrain.metrics import RewardMetric
from rmtrain.model import RewardModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
reward_token_id = 3  # '<|reward|>' in the demo tokenizer
use_varlen_attn = False  # True: pack whole pairs into padding-free rows of max_packed_length tokens
sequence_parallel_size = 1  # >1: each row split over this many processes (Ulysses); see docs/en/distributed.md
loss_type = "ranking"
penalty_type = "log_barrier"
penalty_weight = 0.01
lora_r = 16
lora_alpha = 32
lora_dropout = 0.0
quant_type = "nf4"  # or "fp4"; load_in_8bit=True instead of load_in_4bit for 8-bit

# Data
num_pairs = 2000  # pairs to train on
val_split = 0.1  # share of the generated pairs held out for validation
data_seed = 0
max_length = 96
max_packed_length = 1024  # tokens per packed bin (use_varlen_attn=True)

# Scheduler & Optimizer
batch_size = 16  # pairs per device (use_varlen_attn=True: one packed bin per device instead)
accumulative_counts = 1
dataloader_num_workers = 0
max_epochs = 2
optim_type = AdamW
lr = 2e-3  # adapters and a zero-initialised head: larger steps than full training
betas = (0.9, 0.999)
weight_decay = 0.0
max_norm = 1.0
warmup_ratio = 0.05
mixed_precision = "auto"  # bf16 autocast where the device supports it

# Save
save_steps = 100
save_total_limit = 2
val_interval = save_steps  # validate every N iterations and at the end; the best val/accuracy checkpoint is kept
log_interval = 10

#######################################################################
#            PART 2  Model & Tokenizer                                #
#######################################################################
tokenizer = dict(type=build_demo_tokenizer)

model = dict(
    type=RewardModel,  # reward_token_id and use_varlen_attn come from the data set's config
    loss_type=loss_type,
    penalty_type=penalty_type,
    penalty_weight=penalty_weight,
    use_activation_checkpointing=False,
    llm=dict(
        type=tiny_llama_base_model,  # AutoModel.from_pretrained(<folder>): 4 layers, hidden 128, vocab 1024
        attn_implementation="sdpa",
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=True,
            # bnb_4bit_compute_dtype: bf16 where the device computes it natively, else fp32 (when left out)
        ),
    ),
    # target_modules left out: the default for Llama (q, k, v, o, gate, up, down projections)
    lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none"),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
# num_pairs / (1 - val_split) pairs are generated, so that num_pairs remain for training.
demo_data = dict(type=build_demo_preference_data, num_pairs=round(num_pairs / (1 - val_split)), seed=data_seed)

train_dataset = dict(
    type=build_preference_dataset,
    dataset=demo_data,
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=None,  # generated records are already prompt/chosen/rejected messages
    is_dpo=False,
    is_reward=True,
    reward_token_id=reward_token_id,
    num_proc=1,
    use_varlen_attn=use_varlen_attn,
    max_packed_length=max_packed_length,
    pack_seed=data_seed,
    val_split=val_split,  # the records of the val part are left out
    split_seed=data_seed,
    split="train",
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

# Validation: the held-out part of the same records, built with the same settings.
val_dataset = dict(train_dataset, split="val")

val_dataloader = dict(
    batch_size=1 if use_varlen_attn else batch_size,
    num_workers=dataloader_num_workers,
    dataset=val_dataset,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=preference_collate_fn),
)

# Reports val/accuracy, val/margin_mean, val/chosen_score_mean, val/rejected_score_mean, val/score_std, val/pairs.
val_evaluator = dict(type=RewardMetric)

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

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs, val_interval=val_interval)
val_cfg = dict(type=ValLoop)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = []

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    # Keeps the last save_total_limit checkpoints and, apart from them, the one with the best validation accuracy.
    checkpoint=dict(
        type=CheckpointHook,
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit,
        save_best="val/accuracy",
        rule="greater",
    ),
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
