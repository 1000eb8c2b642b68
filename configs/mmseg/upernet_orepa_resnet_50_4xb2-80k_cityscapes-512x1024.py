# UPerNet / OREPA-ResNet-50 on Cityscapes, mmseg's 80k schedule (4 GPUs x 2 images, 512x1024 crops), as mmseg's
# own upernet/upernet_r50_4xb2-80k_cityscapes-512x1024.py. OREPA's README (JUGGHM/OREPA_CVPR2022) reports its
# segmentation runs with mmsegmentation on Cityscapes.
_base_ = [
    "./_base_/models/upernet_orepa_resnet_50.py",
    "mmseg::_base_/datasets/cityscapes.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_80k.py",
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
