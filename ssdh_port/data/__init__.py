"""Data: dataset readers (and, as the data path grows, Caffe's LMDB/Datum
records and DataTransformer)."""
