# UPerNet (UPerHead + FCN auxiliary head) with a RepVGG-B0 backbone (mmsegmentation 1.x).
# in_channels is repzoo.integrations.openmmlab.stage_channels("RepVGG-B0", (1, 2, 3, 4)); the tests check it.
custom_imports = dict(imports=["repzoo.integrations.mmseg"], allow_failed_imports=False)
default_scope = "mmseg"

num_classes = 4
crop_size = (64, 64)
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size,
    ),
    backbone=dict(
        type="RepZooBackbone",
        model_name="RepVGG-B0",
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        deploy=False,
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[64, 128, 256, 1280],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=32,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=256,
        in_index=2,
        channels=16,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005),
                     clip_grad=None)
