# Semantic FPN (FPN neck + FPNHead) with a RepOpt-VGG-B1 backbone: the model only (mmsegmentation 1.x), to list
# beside mmseg's dataset, schedule and runtime bases. The neck's in_channels are
# repzoo.integrations.openmmlab.stage_channels("RepOpt-VGG-B1", (1, 2, 3, 4)); the tests check them. The rest
# is mmseg's _base_/models/fpn_r50.py. RepOpt-VGG-B1 is the plain target model: fine-tune it with a plain
# optimizer (as here) or a RepOptimizer (repzoo.optim); repzoo.reparameterize folds its BNs for deployment.
custom_imports = dict(imports=["repzoo.integrations.mmseg"], allow_failed_imports=False)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="RepZooBackbone", model_name="RepOpt-VGG-B1", out_indices=(1, 2, 3, 4), frozen_stages=-1,
                  norm_eval=False, deploy=False, pretrained=True),
    neck=dict(type="FPN", in_channels=[128, 256, 512, 2048], out_channels=256, num_outs=4),
    decode_head=dict(
        type="FPNHead",
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
