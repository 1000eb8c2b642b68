# UPerNet (UPerHead + FCN auxiliary head) with a RepVGG-B0 backbone: the model only (mmsegmentation 1.x), to
# list beside mmseg's dataset, schedule and runtime bases. The heads' in_channels are
# repzoo.integrations.openmmlab.stage_channels("RepVGG-B0", (1, 2, 3, 4)); the tests check them. Everything
# else is mmseg's _base_/models/upernet_r50.py (the full config sets the crop size).
custom_imports = dict(imports=["repzoo.integrations.mmseg"], allow_failed_imports=False)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="RepZooBackbone", model_name="RepVGG-B0", out_indices=(1, 2, 3, 4), frozen_stages=-1,
                  norm_eval=False, deploy=False, pretrained=True),
    decode_head=dict(
        type="UPerHead",
        in_channels=[64, 128, 256, 1280],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=256,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
