"""Data: Caffe's Datum records in LMDB / LevelDB, the DataTransformer, image
lists and the dataset preparation (MNIST, CIFAR-10, folders, mosaics)."""
