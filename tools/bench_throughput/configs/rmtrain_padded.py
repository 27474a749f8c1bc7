# The "rmtrain padded" arm of tools/bench_throughput: the random-init Llama reward model trained on
# right-padded batches of P pairs, the benchmark window's batches in its order (tools/bench_throughput/
# window.py; by default rmtrain's LengthGroupedSampler batching: pairs of similar length share a step).
# The benchmark builds the inputs every arm shares (weights, tokenizer, tokenised data, sizes, optimizer
# settings) and passes them to this file as --cfg-options (tools/bench_throughput/arms.py,
# rmtrain_cfg_options); the values below are placeholders of the right kind.
from mmengine.dataset import DefaultSampler
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer
from torch.optim import AdamW
from transformers import AutoTokenizer, LlamaModel

from rmtrain.data import load_jsonl_dataset, preference_collate_fn
from rmtrain.engine import AutocastOptimWrapper, RewardLogProcessor, TrainLoop
from rmtrain.model import RewardModel
from tools.bench_throughput.hooks import BenchStepHook
from tools.bench_throughput.window import window_dataset

# Settings
tokenizer_dir = "work_dirs/bench_throughput/cache/tokenizer"  # byte-level BPE with a reward and a pad token
model_dir = "work_dirs/bench_throughput/cache/model"  # random-init Llama, the same weights in every arm
data_file = "hh-rlhf/helpful-base/test.jsonl.gz"
pairs_per_step = 8
max_length = 1024
log_interval = 10  # LoggerHook interval and TRL's logging_steps: the same logging work in every arm
seed = 0

tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=tokenizer_dir)

model = dict(
    type=RewardModel,  # reward_token_id and use_varlen_attn come from the data set's config
    loss_type="ranking",
    penalty_type="none",  # plain Bradley-Terry, as TRL's loss without centering
    use_activation_checkpointing=False,
    llm=dict(
        type=LlamaModel.from_pretrained,
        pretrained_model_name_or_path=model_dir,
        dtype="float32",
        attn_implementation="sdpa",
    ),
)

train_dataloader = dict(
    batch_size=pairs_per_step,
    num_workers=0,
    dataset=dict(
        type=window_dataset,  # rmtrain's build_preference_dataset, served in the window's order
        window_file="window.json",
        dataset=dict(type=load_jsonl_dataset, data_files=data_file),
        tokenizer=tokenizer,
        max_length=max_length,
        dataset_map_fn="hh_rlhf_map_fn",
        is_dpo=False,
        is_reward=True,
        reward_token_id=None,
        num_proc=1,
        skip_bad_records=True,  # a few HH-RLHF records have an empty response
        use_varlen_attn=False,
        max_packed_length=2 * max_length,
    ),
    sampler=dict(type=DefaultSampler, shuffle=False),  # the window's order
    collate_fn=dict(type=preference_collate_fn, pad_token_id=0),
)

optim_wrapper = dict(
    type=AutocastOptimWrapper,
    dtype="auto",
    optimizer=dict(type=AdamW, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=1,
)

param_scheduler = []  # constant learning rate, as in the other arms
train_cfg = dict(type=TrainLoop, max_iters=23)

custom_hooks = [dict(type=BenchStepHook, out_file="steps.json", profile_step=None)]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=None,  # no saving in any arm
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="gloo"),
)
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])  # scalars.json only, no TensorBoard
log_processor = dict(type=RewardLogProcessor, by_epoch=False, window_size=log_interval)
log_level = "INFO"
randomness = dict(seed=seed, deterministic=False)
