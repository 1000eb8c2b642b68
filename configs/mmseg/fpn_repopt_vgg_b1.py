# Semantic FPN (FPN neck + FPNHead) with a RepOpt-VGG-B1 backbone (mmsegmentation 1.x).
# in_channels is repzoo.integrations.openmmlab.stage_channels("RepOpt-VGG-B1", (1, 2, 3, 4)); the tests check it.
# RepOpt-VGG-B1 is the plain target model: fine-tune it with a RepOptimizer (repzoo.optim) or a
# plain one; `repzoo.reparameterize` folds its BNs for deployment.
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
        model_name="RepOpt-VGG-B1",
        out_indices=(1, 2, 3, 4),
        frozen_stages=2,
        norm_eval=False,
        deploy=False,
    ),
    neck=dict(type="FPN", in_channels=[128, 256, 512, 2048], out_channels=32, num_outs=4),
    decode_head=dict(
        type="FPNHead",
        in_channels=[32, 32, 32, 32],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=16,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005),
                     clip_grad=None)
