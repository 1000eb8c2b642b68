# UPerNet / RepVGG-B0 on ADE20K, mmseg's 160k schedule (4 GPUs x 4 images, 512x512 crops), as mmseg's own
# upernet/upernet_r50_4xb4-160k_ade20k-512x512.py: train with
#   python -m repzoo.integrations.openmmlab mmseg train configs/mmseg/upernet_repvgg_b0_4xb4-160k_ade20k-512x512.py
# (data in data/ade/ADEChallengeData2016 as mmseg expects it; see docs/detection_segmentation.md).
_base_ = [
    "./_base_/models/upernet_repvgg_b0.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_160k.py",
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
