# RetinaNet with an OREPA-ResNet-50 backbone and FPN: the model only (mmdetection 3.x), as
# retinanet_repvgg_a0_fpn.py with another backbone. OREPA's ResNets have no stem level: levels 0..3 are the
# four stages (strides 4..32), and frozen_stages=0 freezes the stem and the first stage, as mmdet freezes
# ResNet's. The neck's in_channels are repzoo.integrations.openmmlab.stage_channels("OREPA-ResNet-50",
# (0, 1, 2, 3)); the tests check them.
_base_ = "./retinanet_repvgg_a0_fpn.py"
model = dict(
    backbone=dict(model_name="OREPA-ResNet-50", out_indices=(0, 1, 2, 3), frozen_stages=0),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
