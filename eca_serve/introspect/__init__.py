"""Attention taps: which layers carry channel attention, and modules that expose their weights."""

from eca_serve.introspect.taps import AttentionLayer, AttentionOutputs, attention_layers

__all__ = ["AttentionLayer", "AttentionOutputs", "attention_layers"]
