"""The three MTCNN networks (Zhang et al. 2016) as Gluon blocks, laid out as the ``mtcnn`` wheel's
Keras models so that their converted weights load by name (``mtcnn.load_net``).

Imported only when a network is built: it imports mxnet.
"""
from mxnet.gluon import nn


class PNet(nn.HybridBlock):
    """P-Net: 3x3 conv 10, PReLU, max-pool 2/2 ('same'), 3x3 conv 16, PReLU, 3x3 conv 32,
    PReLU, 1x1 conv 4 (box offsets) and 1x1 conv 2 + softmax (face probability)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.conv1 = nn.Conv2D(10, 3, in_channels=3)
            self.prelu1 = nn.PReLU(in_channels=10)
            # Keras 'same' with k=2, s=2 pads only after: MXNet's ceil mode is the same.
            self.pool1 = nn.MaxPool2D(2, 2, ceil_mode=True)
            self.conv2 = nn.Conv2D(16, 3, in_channels=10)
            self.prelu2 = nn.PReLU(in_channels=16)
            self.conv3 = nn.Conv2D(32, 3, in_channels=16)
            self.prelu3 = nn.PReLU(in_channels=32)
            self.conv4_1 = nn.Conv2D(4, 1, in_channels=32)
            self.conv4_2 = nn.Conv2D(2, 1, in_channels=32)

    def hybrid_forward(self, F, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x), F.softmax(self.conv4_2(x), axis=1)

class RNet(nn.HybridBlock):
    """R-Net on 24x24: conv 28, pool 3/2 'same', conv 48, pool 3/2 'valid', 2x2 conv 64,
    dense 128, heads: box offsets (4) and face probability (2)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.conv1 = nn.Conv2D(28, 3, in_channels=3)
            self.prelu1 = nn.PReLU(in_channels=28)
            # Keras 'same' for k=3, s=2 on 22 pads 0 before and 1 after: ceil mode.
            self.pool1 = nn.MaxPool2D(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2D(48, 3, in_channels=28)
            self.prelu2 = nn.PReLU(in_channels=48)
            self.pool2 = nn.MaxPool2D(3, 2)
            self.conv3 = nn.Conv2D(64, 2, in_channels=48)
            self.prelu3 = nn.PReLU(in_channels=64)
            self.fc4 = nn.Dense(128, in_units=576)
            self.prelu4 = nn.PReLU(in_channels=128)
            self.fc5_1 = nn.Dense(4, in_units=128)
            self.fc5_2 = nn.Dense(2, in_units=128)

    def hybrid_forward(self, F, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.fc4(self.prelu3(self.conv3(x))))
        return self.fc5_1(x), F.softmax(self.fc5_2(x), axis=1)

class ONet(nn.HybridBlock):
    """O-Net on 48x48: conv 32, pool 3/2 'same', conv 64, pool 3/2 'valid', conv 64,
    pool 2/2 'same', 2x2 conv 128, dense 256, heads: box offsets (4), landmarks (10),
    face probability (2)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with self.name_scope():
            self.conv1 = nn.Conv2D(32, 3, in_channels=3)
            self.prelu1 = nn.PReLU(in_channels=32)
            self.pool1 = nn.MaxPool2D(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2D(64, 3, in_channels=32)
            self.prelu2 = nn.PReLU(in_channels=64)
            self.pool2 = nn.MaxPool2D(3, 2)
            self.conv3 = nn.Conv2D(64, 3, in_channels=64)
            self.prelu3 = nn.PReLU(in_channels=64)
            self.pool3 = nn.MaxPool2D(2, 2, ceil_mode=True)
            self.conv4 = nn.Conv2D(128, 2, in_channels=64)
            self.prelu4 = nn.PReLU(in_channels=128)
            self.fc5 = nn.Dense(256, in_units=1152)
            self.prelu5 = nn.PReLU(in_channels=256)
            self.fc6_1 = nn.Dense(4, in_units=256)
            self.fc6_2 = nn.Dense(10, in_units=256)
            self.fc6_3 = nn.Dense(2, in_units=256)

    def hybrid_forward(self, F, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.fc5(self.prelu4(self.conv4(x))))
        return self.fc6_1(x), self.fc6_2(x), F.softmax(self.fc6_3(x), axis=1)


NETWORKS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
