# FCOS / RepGhostNet-1.0x / FPN (GN head) on COCO 2017, mmdet's 1x schedule with FCOS's own optimizer
# settings (mmdet's fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py: lr 0.01, constant warm-up, bias lr x2, clipping).
_base_ = [
    "./_base_/models/fcos_repghostnet_1_0x_fpn.py",
    "mmdet::_base_/datasets/coco_detection.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
param_scheduler = [
    dict(type="ConstantLR", factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01), paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
                     clip_grad=dict(max_norm=35, norm_type=2))
