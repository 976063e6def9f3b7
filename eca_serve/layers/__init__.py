"""Neural-network building blocks; imports only torch."""

from eca_serve.layers.create_attn import attention_names, create_attn
from eca_serve.layers.eca import EcaModule, eca_kernel_size
from eca_serve.layers.se import SEModule
from eca_serve.layers.dgc import DynamicMultiHeadConv, HeadConv, keep_mask
from eca_serve.layers.split_attn import SplitAttnConv2d

__all__ = [
    "DynamicMultiHeadConv", "EcaModule", "HeadConv", "SEModule", "SplitAttnConv2d", "attention_names", "create_attn",
    "eca_kernel_size", "keep_mask",
]
