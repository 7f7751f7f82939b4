"""torch.utils.data access to Datum databases, for training loops outside CaffeNet.

DatumDataset yields (image, label): the stored uint8 C x H x W tensor (or float
for float_data), or, with a DataTransformer, the Caffe-transformed float tensor.
For the fastest path, leave transform=None, batch the uint8 images with a
DataLoader, move the batch to the GPU and call the transformer there (it crops,
mirrors and subtracts the mean on the device). Each DataLoader worker opens its
own database environment.
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from ssdh_port.data.db import open_db


class DatumDataset(Dataset):
    def __init__(self, path, backend="lmdb", transform=None, force_color=False, force_gray=False):
        self.db = open_db(path, backend)
        self.transform = transform
        self.force_color, self.force_gray = force_color, force_gray

    def __len__(self):
        return len(self.db)

    def __getitem__(self, index):
        array, label = self.db.read(index, self.force_color, self.force_gray)
        image = torch.from_numpy(np.array(array))
        if self.transform is not None:
            image = self.transform(image[None])[0]
        return image, label
