

def test_deepcopy_keeps_the_attention_read_out() -> None:
    import copy

    model = create_model("torchvision:resnet18", num_classes=3, surgery={"kind": "eca", "min_channels": 256})
    clone = copy.deepcopy(model)
    assert clone.attention_layers == model.attention_layers and clone.config == model.config
    clone.get_submodule("layer3.0.conv1.eca").conv.weight.data.fill_(1.0)  # the copy owns its tensors
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(clone.forward_with_attention(x)[0], model.forward_with_attention(x)[0])
        assert torch.allclose(clone.forward_with_attention(x)[0], clone(x))
