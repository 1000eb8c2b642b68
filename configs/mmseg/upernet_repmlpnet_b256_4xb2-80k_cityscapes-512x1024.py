# UPerNet / RepMLPNet-B256 on Cityscapes, mmseg's 80k schedule (4 GPUs x 2 images, 512x1024 crops). RepMLPNet
# needs inputs whose sides are multiples of 256: the 512x1024 crops and the whole 1024x2048 test images are.
_base_ = [
    "./_base_/models/upernet_repmlpnet_b256.py",
    "mmseg::_base_/datasets/cityscapes.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_80k.py",
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
