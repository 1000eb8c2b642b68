# RetinaNet / RepVGG-A0 / FPN on COCO 2017, mmdet's 1x schedule (12 epochs, 8 GPUs x 2 images), as mmdet's own
# retinanet/retinanet_r50_fpn_1x_coco.py: train with
#   python -m repzoo.integrations.openmmlab mmdet train configs/mmdet/retinanet_repvgg_a0_fpn_1x_coco.py
# (data in data/coco/ as mmdet expects it; see docs/detection_segmentation.md).
_base_ = [
    "./_base_/models/retinanet_repvgg_a0_fpn.py",
    "mmdet::_base_/datasets/coco_detection.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0001))
