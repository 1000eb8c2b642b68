# FCOS with a RepGhostNet-1.0x backbone and FPN (mmdetection 3.x).
# in_channels is repzoo.integrations.openmmlab.stage_channels("RepGhostNet-1.0x", (1, 2, 3, 4)); the tests check it.
custom_imports = dict(imports=["repzoo.integrations.mmdet"], allow_failed_imports=False)
default_scope = "mmdet"

num_classes = 3
model = dict(
    type="FCOS",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="RepZooBackbone",
        model_name="RepGhostNet-1.0x",
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        deploy=False,
    ),
    neck=dict(
        type="FPN",
        in_channels=[24, 40, 112, 960],
        out_channels=32,
        start_level=1,
        add_extra_convs="on_output",
        num_outs=5,
        relu_before_extra_convs=True,
    ),
    bbox_head=dict(
        type="FCOSHead",
        num_classes=num_classes,
        in_channels=32,
        stacked_convs=2,
        feat_channels=32,
        strides=[8, 16, 32, 64, 128],
        norm_cfg=dict(type="GN", num_groups=8, requires_grad=True),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="IoULoss", loss_weight=1.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    ),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                  max_per_img=100),
)

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0001),
                     clip_grad=dict(max_norm=35, norm_type=2))
