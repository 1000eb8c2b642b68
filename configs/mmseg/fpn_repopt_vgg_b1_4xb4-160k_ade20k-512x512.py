# Semantic FPN / RepOpt-VGG-B1 on ADE20K, mmseg's 160k schedule (4 GPUs x 4 images, 512x512 crops), as
# mmseg's own sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py.
_base_ = [
    "./_base_/models/fpn_repopt_vgg_b1.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
