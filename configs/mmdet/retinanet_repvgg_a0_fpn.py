# RetinaNet with a RepVGG-A0 backbone and FPN (mmdetection 3.x).
# in_channels is repzoo.integrations.openmmlab.stage_channels("RepVGG-A0", (1, 2, 3, 4)); the tests check it.
# A real run would use the usual dataset / schedule settings, 800x1333 images, 80 classes and
# `pretrained=True` (or init_cfg=dict(type="Pretrained", checkpoint="RepVGG-A0-train.pth")).
custom_imports = dict(imports=["repzoo.integrations.mmdet"], allow_failed_imports=False)
default_scope = "mmdet"

num_classes = 3
model = dict(
    type="RetinaNet",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="RepZooBackbone",
        model_name="RepVGG-A0",
        out_indices=(1, 2, 3, 4),
        frozen_stages=1,
        norm_eval=True,
        deploy=False,
    ),
    neck=dict(
        type="FPN",
        in_channels=[48, 96, 192, 1280],
        out_channels=32,
        start_level=1,
        add_extra_convs="on_input",
        num_outs=5,
    ),
    bbox_head=dict(
        type="RetinaHead",
        num_classes=num_classes,
        in_channels=32,
        stacked_convs=2,
        feat_channels=32,
        anchor_generator=dict(
            type="AnchorGenerator",
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128],
        ),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    ),
    train_cfg=dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type="PseudoSampler"),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                  max_per_img=100),
)

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0001),
                     clip_grad=dict(max_norm=35, norm_type=2))
