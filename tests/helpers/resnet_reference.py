"""torchvision's ResNet-18 forward (ResNet.forward / BasicBlock.forward, eval mode) written with F on a
state_dict, for checking stabkern.zoo's definitions; `norm(prefix, t)` is the normalization layer at key
`prefix` (BatchNorm for resnet18, GroupNorm for resnet18_gn)."""

import torch.nn.functional as F


def resnet18_reference(s, x, norm):
    x = F.max_pool2d(F.relu(norm("bn1", F.conv2d(x, s["conv1.weight"], stride=2, padding=3))), 3, 2, 1)
    for stage in range(1, 5):
        for b in range(2):
            p = f"layer{stage}.{b}"
            stride = 2 if (b == 0 and stage > 1) else 1
            skip = x
            if p + ".downsample.0.weight" in s:
                skip = norm(p + ".downsample.1", F.conv2d(x, s[p + ".downsample.0.weight"], stride=stride))
            out = F.relu(norm(p + ".bn1", F.conv2d(x, s[p + ".conv1.weight"], stride=stride, padding=1)))
            out = norm(p + ".bn2", F.conv2d(out, s[p + ".conv2.weight"], padding=1))
            x = F.relu(out + skip)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), s["fc.weight"], s["fc.bias"])
