"""A/B harness: reward-model quality of rmtrain against TRL's RewardTrainer (`python -m tools.quality`)."""
