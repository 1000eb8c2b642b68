"""torch.hub entrypoints: one per registered model, under its Python alias.

    torch.hub.load("<owner>/repzoo", "repvgg_a0", pretrained=True, deploy=True)

Every keyword of ``repzoo.create_model`` passes through.
"""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "requests", "tqdm", "filelock"]

import repzoo as _repzoo  # noqa: E402


def _entrypoint(name):
    def entry(pretrained=False, **kwargs):
        return _repzoo.create_model(name, pretrained=pretrained, **kwargs)

    info = _repzoo.get_model_entry(name)
    entry.__name__ = entry.__qualname__ = info.alias
    entry.__doc__ = (
        f"{name} ({info.family}, {info.paper}).\n\n"
        f"{(info.builder.__doc__ or '').strip()}\n\n"
        "Args: pretrained (bool), deploy (bool), num_classes, features_only, checkpoint_path, and "
        "the other keywords of repzoo.create_model."
    )
    return entry


for _name in _repzoo.list_models():
    _entry = _entrypoint(_name)
    globals()[_entry.__name__] = _entry
del _name, _entry
