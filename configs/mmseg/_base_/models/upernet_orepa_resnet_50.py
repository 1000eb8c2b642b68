# UPerNet (UPerHead + FCN auxiliary head) with an OREPA-ResNet-50 backbone for Cityscapes' 19 classes: the model
# only (mmsegmentation 1.x), as upernet_repvgg_b0.py with another backbone. OREPA's ResNets have no stem level:
# levels 0..3 are the four stages. The heads' in_channels are
# repzoo.integrations.openmmlab.stage_channels("OREPA-ResNet-50", (0, 1, 2, 3)); the tests check them.
_base_ = "./upernet_repvgg_b0.py"
model = dict(
    backbone=dict(model_name="OREPA-ResNet-50", out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[256, 512, 1024, 2048], num_classes=19),
    auxiliary_head=dict(in_channels=1024, num_classes=19),
)
