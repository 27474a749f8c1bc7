"""rmtrain: train reward models for RLHF from mmengine Python configs.

Kept free of heavy imports so that `rmtrain list-cfg` and `rmtrain copy-cfg` answer fast.
"""

__version__ = "0.1.0"
