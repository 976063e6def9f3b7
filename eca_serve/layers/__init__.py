"""Neural-network building blocks; imports only torch."""

from eca_serve.layers.create_attn import attention_names, create_attn
from eca_serve.layers.eca import EcaModule, eca_kernel_size
from eca_serve.layers.se import SEModule

__all__ = ["EcaModule", "SEModule", "attention_names", "create_attn", "eca_kernel_size"]
