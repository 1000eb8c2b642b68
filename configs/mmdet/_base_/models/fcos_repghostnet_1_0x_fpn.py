# FCOS with a RepGhostNet-1.0x backbone and FPN: the model only (mmdetection 3.x), to list beside mmdet's
# dataset, schedule and runtime bases. The neck's in_channels are
# repzoo.integrations.openmmlab.stage_channels("RepGhostNet-1.0x", (1, 2, 3, 4)); the tests check them.
# The rest is mmdet's fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py (GN head), with ImageNet mean/std in RGB
# for repzoo's weights.
custom_imports = dict(imports=["repzoo.integrations.mmdet"], allow_failed_imports=False)
model = dict(
    type="FCOS",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        type="RepZooBackbone",
        model_name="RepGhostNet-1.0x",
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        deploy=False,
        pretrained=True,
    ),
    neck=dict(type="FPN", in_channels=[24, 40, 112, 960], out_channels=256, start_level=1,
              add_extra_convs="on_output", num_outs=5, relu_before_extra_convs=True),
    bbox_head=dict(
        type="FCOSHead",
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        strides=[8, 16, 32, 64, 128],
        norm_cfg=dict(type="GN", num_groups=32, requires_grad=True),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="IoULoss", loss_weight=1.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    ),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                  max_per_img=100),
)
