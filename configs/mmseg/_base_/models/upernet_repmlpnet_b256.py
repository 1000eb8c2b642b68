# UPerNet (UPerHead + FCN auxiliary head) with a RepMLPNet-B256 backbone for Cityscapes' 19 classes: the model
# only (mmsegmentation 1.x), as upernet_repvgg_b0.py with another backbone. RepMLPNet has no stem level (levels
# 0..3 are its stages) and cuts each stage into fixed partitions: the input's height and width must be
# multiples of 256 (Cityscapes' 512x1024 crops and whole 1024x2048 images are). The heads' in_channels are
# repzoo.integrations.openmmlab.stage_channels("RepMLPNet-B256", (0, 1, 2, 3)); the tests check them.
_base_ = "./upernet_repvgg_b0.py"
model = dict(
    backbone=dict(model_name="RepMLPNet-B256", out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=19),
    auxiliary_head=dict(in_channels=384, num_classes=19),
)
