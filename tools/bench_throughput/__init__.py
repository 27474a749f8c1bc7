"""Training throughput: rmtrain (packed and padded) against TRL's RewardTrainer and a bare-model ceiling.

One invocation runs, for every model size and data set, four arms on identical inputs. The package:
settings.py (arms, sizes, data sets), inputs.py (the shared tokenizer, tokenised pairs and weights),
arms.py (each arm, run in its own process), configs/ (the rmtrain arms' config files), hooks.py (the
per-step recorder those configs name), running.py (the subprocess per arm), report.py (tables and docs).

  rmtrain_packed  the real `rmtrain train` path (`rmtrain.engine.train.train`) with use_varlen_attn=True:
                  whole pairs packed into bins of at most M tokens, one bin per optimizer step
                  (M is chosen so that a bin holds about P pairs on average; at least 2 x max_length).
  rmtrain_padded  the same config with use_varlen_attn=False, P pairs per step, right-padded batches of
                  similar length (rmtrain.data.packing.LengthGroupedSampler).
  trl             trl.RewardTrainer with LlamaForSequenceClassification(num_labels=1), P pairs per step,
                  fed the very token ids rmtrain trains on (pre-tokenised chosen_ids / rejected_ids).
  ceiling         the bare model: forward + backward + optimizer step on fixed-shape [2P, L] batches cut
                  from the same tokenised data (L = mean sequence length), no padding, no data pipeline,
                  the same value head and loss.
  trl_grouped     (opt-in: --arms ...,trl_grouped) TRL with transformers' length-grouped sampler
                  (train_sampling_strategy="group_by_length") instead of its default random batches.

Turned off in TRL because rmtrain's arms do not do it: evaluation (eval_strategy="no"), checkpoint saving
(save_strategy="no"), external logging (report_to="none"), reward centering (center_rewards_coefficient=None),
gradient checkpointing (TRL's default is on), the progress bar; TRL's default fused AdamW is replaced by
torch.optim.AdamW (rmtrain's optimizer). rmtrain's arms save no checkpoints and log to scalars.json only (no
TensorBoard); both log every 10 steps. Dropout is 0 in the model.

Shared by every arm: the byte-level BPE tokenizer (trained here on the benchmark texts, ChatML template,
pad token, reward token), the random-init Llama weights (saved once, loaded by every arm), max_length,
AdamW with the same lr / betas / weight decay / gradient clipping, a constant learning rate, bf16
autocast where the CPU supports it (rmtrain.engine.precision's check), `--threads` torch threads, no
gradient checkpointing. Each arm runs in its own subprocess, so its peak RSS is its own.

Measured per arm over the same window (optimizer steps warmup+1 .. warmup+steps; model build, data
tokenising and the first iterations are outside it): real (non-pad) tokens per second, the padded
fraction (pad slots / all token slots), peak RSS of the arm's process, mean pairs per step.

Install the benchmark-only dependency (TRL) without letting pip replace the CPU torch build:

    echo "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')" > /tmp/torch-pin.txt
    pip install -c /tmp/torch-pin.txt -r tools/bench_requirements.txt

Run (the full benchmark, and a quick check):

    python -m tools.bench_throughput --sizes 10m,100m --datasets hh,ultrafeedback --write-docs
    python -m tools.bench_throughput --smoke

Run it on an otherwise idle machine: with other processes on the same cores, step times vary several-fold
(the script warns when the load average is high and records it per arm). --smoke numbers only show that every
arm runs. Full run (2 sizes x 2 data sets x 4 arms, 20 measured steps): roughly 35-45 minutes on an idle
2-core CPU. Outputs: the tables on stdout, <work-dir>/results.json, per-arm logs under <work-dir>/runs/,
and with --write-docs docs/benchmarks.md.

Data: ../shared/data beside the checkout (or --data-root / $RMTRAIN_BENCH_DATA); nothing is downloaded.
"""
