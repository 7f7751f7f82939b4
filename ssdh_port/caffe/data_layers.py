"""Caffe's data layers: Data (LMDB of Datum records), ImageData (a list file of
images), HDF5Data (a list file of HDF5 files) and WindowData (R-CNN's window
files). Paths resolve against the working directory, as in Caffe. Batches come
in database order and wrap around at the end (WindowData draws at random); labels
come out as float, as Caffe's label blobs are.
"""
import math
import os

import cv2
import numpy as np
import torch

from ssdh_port.caffe.layers import CaffeLayer, register
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import open_db
from ssdh_port.data.imageset import ImagesetError, read_list
from ssdh_port.data.prefetch import BatchPrefetcher
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.errors import SSDHError


class _SourceLayer(CaffeLayer):
    """A data layer: no bottoms, a data top and an optional label top."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if bottom_shapes:
            raise self.error("a data layer takes no bottoms")
        if len(param.top) not in (1, 2):
            raise self.error(f"expects a data top and an optional label top, got {len(param.top)}")
        self.transformer = DataTransformer(param.transform_param, phase)
        self.cursor = 0
        # Set by CaffeNet: on a GPU the uint8 batch moves there before the transform.
        self.transform_device = None

    def reseed(self, seed):
        self.transformer.rng = np.random.default_rng(seed)

    def batch_indices(self, batch_size, total):
        indices = [(self.cursor + i) % total for i in range(batch_size)]
        self.cursor = (self.cursor + batch_size) % total
        return indices

    def stacked(self, images):
        first = images[0].shape
        for i, image in enumerate(images):
            if image.shape != first:
                raise self.error(f"item {i} of the batch has shape {image.shape}, the first {first}; "
                                 "a batch needs images of one size (resize them)")
        return torch.from_numpy(np.stack(images))

    def _transformed(self, batch, labels):
        if self.transform_device is not None and self.transform_device.type == "cuda":
            if not batch.is_pinned():
                batch = batch.pin_memory()
            batch = batch.to(self.transform_device, non_blocking=True)
        data = self.transformer(batch)
        if len(self.param.top) == 1:
            return (data,)
        return data, torch.tensor(labels, dtype=torch.float32)


@register("Data")
class Data(_SourceLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.data_param
        if not p.source:
            raise self.error("data_param.source is required")
        if not p.batch_size:
            raise self.error("data_param.batch_size must be positive")
        backend = "lmdb" if p.backend == pb.DataParameter.LMDB else "leveldb"
        self.db = open_db(p.source, backend)
        self.batch_size = p.batch_size
        if p.rand_skip:
            self.cursor = int(np.random.default_rng().integers(p.rand_skip)) % len(self.db)
        sample, _ = self._read(0)
        self.sample_shape = sample.shape
        first = self.db.datum(0)
        # A database of float_data vectors is a label database (multi-label data),
        # read in step with an image database key by key.
        self.is_label_db = bool(first.float_data) and not first.data
        # Raw byte records take the one-copy batch path (force_* only touch encoded ones).
        self.raw_records = bool(first.data) and not first.encoded
        self._staging = None
        self._prefetcher = None
        # Multi-process training (ssdh_port.caffe.parallel): this rank keeps the
        # records whose running offset is rank modulo world (Caffe's DataLayer::Skip).
        self.rank, self.world, self.offset = 0, 1, 0

    def shard(self, rank, world):
        """Read only this rank's records (TRAIN phase; TEST data layers read everything)."""
        if self.phase == "TRAIN":
            self.rank, self.world = int(rank), int(world)

    def batch_indices(self, batch_size, total):
        if self.world == 1:
            return super().batch_indices(batch_size, total)
        indices = []
        while len(indices) < batch_size:
            if self.offset % self.world == self.rank:
                indices.append(self.cursor)
            self.offset += 1
            self.cursor = (self.cursor + 1) % total
        return indices

    def _read(self, index):
        t = self.transformer
        return self.db.read(index, t.force_color, t.force_gray)

    def top_shapes(self):
        shape = (self.batch_size,) + self.transformer.output_shape(*self.sample_shape)
        return [shape, (self.batch_size,)][: len(self.param.top)]

    def forward(self):
        if self._prefetcher is not None:
            batch, labels, self.position = self._prefetcher.next()
        else:
            batch, labels, self.position = self._read_next()
        return self._transformed(batch, labels)

    def data_state(self):
        """Where the next batch starts (read-ahead batches not yet used do not count).
        Sharded, the position is taken to the iteration boundary: the next offset
        that is a multiple of world, where rank 0's next record and every rank's
        batch begin, so that a run resumes with any number of ranks."""
        cursor, offset = getattr(self, "position", (self.cursor, self.offset))
        while offset % self.world:
            offset += 1
            cursor = (cursor + 1) % len(self.db)
        return {"cursor": int(cursor), "offset": int(offset)}

    def load_data_state(self, state):
        was_prefetching = self._prefetcher is not None
        self.stop_prefetch()
        self.cursor = int(state["cursor"]) % len(self.db)
        self.offset = int(state.get("offset", 0))
        self.position = (self.cursor, self.offset)
        if was_prefetching:
            self.start_prefetch()

    def start_prefetch(self, depth=3, pin_memory=False):
        """Read the next `depth` batches ahead on a thread (as Caffe's data layers
        do), into page-locked memory with pin_memory (batches bound for a GPU).
        The batches and their order are the same as without."""
        self.stop_prefetch()
        # read_ahead: each batch in its own tensor (the thread may start before
        # self._prefetcher is set, so the staging buffer must not be chosen by it).
        self._prefetcher = BatchPrefetcher(lambda: self._read_next(pin_memory, read_ahead=True), depth,
                                           name=f"prefetch {self.name}")

    def stop_prefetch(self):
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def _read_next(self, pin_memory=False, read_ahead=False):
        """The next batch as stored: (uint8 N x C x H x W tensor, labels)."""
        indices = self.batch_indices(self.batch_size, len(self.db))
        if self.raw_records and hasattr(self.db, "read_batch"):
            # Raw byte records: one copy from the mapped database into the batch;
            # without read-ahead, into a staging batch reused across forwards (the
            # transform writes a new tensor).
            shape = (self.batch_size,) + self.sample_shape
            if pin_memory:
                batch = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            elif not read_ahead:
                if self._staging is None:
                    self._staging = torch.empty(shape, dtype=torch.uint8)
                batch = self._staging
            else:
                batch = torch.empty(shape, dtype=torch.uint8)
            labels = self.db.read_batch(indices, batch.numpy())
            return batch, labels, (self.cursor, self.offset)
        records = [self._read(i) for i in indices]
        return self.stacked([r[0] for r in records]), [r[1] for r in records], (self.cursor, self.offset)


def check_paired_databases(layers):
    """Label databases must be in step with the image database of the same net:
    same length, same keys in the same order (Caffe pairs them by position)."""
    data = [m for m in layers if isinstance(m, Data)]
    images = [m for m in data if not m.is_label_db]
    for labels in (m for m in data if m.is_label_db):
        for image in images:
            if len(image.db) != len(labels.db):
                raise labels.error(
                    f"label database {labels.db.path} has {len(labels.db)} records, the image "
                    f"database {image.db.path} {len(image.db)}: they are out of step")
            for index, (a, b) in enumerate(zip(image.db.keys, labels.db.keys)):
                if a != b:
                    raise labels.error(
                        f"label database {labels.db.path} is out of step with {image.db.path} "
                        f"at record {index}: key {b!r} vs {a!r}")


def read_image(path, new_height=0, new_width=0, is_color=True):
    """Caffe's ReadImageToCVMat: OpenCV read, optional resize (bilinear), CHW."""
    image = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SSDHError(f"{path}: cannot read the image")
    if new_height and new_width:
        image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return image[None] if image.ndim == 2 else np.ascontiguousarray(image.transpose(2, 0, 1))


@register("ImageData")
class ImageData(_SourceLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.image_data_param
        if bool(p.new_height) != bool(p.new_width):
            raise self.error("give both new_height and new_width, or neither")
        self.p = p
        try:
            self.entries = read_list(p.source)
        except ImagesetError as err:
            raise self.error(str(err)) from None
        if not self.entries:
            raise self.error(f"list file {p.source} is empty")
        self.order = list(range(len(self.entries)))
        self.shuffle_rng = np.random.default_rng()
        if p.shuffle:
            self.shuffle_rng.shuffle(self.order)
        if p.rand_skip:
            self.cursor = int(self.shuffle_rng.integers(p.rand_skip)) % len(self.entries)
        self.sample_shape = self._read(0)[0].shape

    def _read(self, position):
        name, label = self.entries[self.order[position]]
        path = os.path.join(self.p.root_folder, name)
        try:
            return read_image(path, self.p.new_height, self.p.new_width, self.p.is_color), label
        except ValueError as err:
            raise self.error(str(err)) from None

    def top_shapes(self):
        shape = (self.p.batch_size,) + self.transformer.output_shape(*self.sample_shape)
        return [shape, (self.p.batch_size,)][: len(self.param.top)]

    def forward(self):
        records = []
        for _ in range(self.p.batch_size):
            records.append(self._read(self.cursor))
            self.cursor += 1
            if self.cursor == len(self.entries):
                # End of an epoch: as Caffe, start over, in a new order when shuffling.
                self.cursor = 0
                if self.p.shuffle:
                    self.shuffle_rng.shuffle(self.order)
        return self._transformed(self.stacked([r[0] for r in records]), [r[1] for r in records])

    def data_state(self):
        return {"cursor": int(self.cursor), "order": [int(i) for i in self.order],
                "shuffle_rng": self.shuffle_rng.bit_generator.state}

    def load_data_state(self, state):
        if len(state["order"]) != len(self.entries):
            raise self.error(f"the snapshot's list order has {len(state['order'])} entries, the list "
                             f"{len(self.entries)}")
        self.cursor = int(state["cursor"])
        self.order = np.asarray(state["order"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]


@register("HDF5Data")
class HDF5Data(CaffeLayer):
    """Rows of the datasets named like the tops, file after file, wrapping around."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        import h5py

        p = param.hdf5_data_param
        if not p.batch_size:
            raise self.error("hdf5_data_param.batch_size must be positive")
        try:
            with open(p.source) as f:
                files = [line.strip() for line in f if line.strip()]
        except OSError as err:
            raise self.error(f"cannot read HDF5 list file {p.source} ({err.strerror})") from None
        if not files:
            raise self.error(f"HDF5 list file {p.source} is empty")
        self.tables = []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    missing = [t for t in param.top if t not in f]
                    if missing:
                        raise self.error(f"{path} has no dataset named {missing[0]!r}")
                    self.tables.append([np.asarray(f[t][()], dtype=np.float32) for t in param.top])
            except OSError as err:
                raise self.error(f"cannot read HDF5 file {path} ({err})") from None
            rows = {len(a) for a in self.tables[-1]}
            if len(rows) != 1:
                raise self.error(f"{path}: datasets {list(param.top)} have different row counts")
        self.batch_size = p.batch_size
        self.shuffle = p.shuffle
        self.reseed(None)

    def reseed(self, seed):
        """Caffe's order from the start: with shuffle, the files and the rows of
        each loaded file in a random order (this generator's)."""
        self.rng = np.random.default_rng(seed)
        self.file_order = np.arange(len(self.tables))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self._start_file(0)

    def _start_file(self, position):
        self.file_position, self.row = position, 0
        self.rows = np.arange(len(self.tables[self.file_order[position]][0]))
        if self.shuffle:
            self.rng.shuffle(self.rows)

    def _next_file(self):
        position = self.file_position + 1
        if position == len(self.tables):
            position = 0
            if self.shuffle:
                self.rng.shuffle(self.file_order)
        self._start_file(position)

    def top_shapes(self):
        return [(self.batch_size,) + a.shape[1:] for a in self.tables[0]]

    def data_state(self):
        return {"file_order": [int(i) for i in self.file_order], "file_position": int(self.file_position),
                "row": int(self.row), "rows": [int(i) for i in self.rows], "rng": self.rng.bit_generator.state}

    def load_data_state(self, state):
        self.file_order = np.asarray(state["file_order"])
        self.file_position, self.row = int(state["file_position"]), int(state["row"])
        self.rows = np.asarray(state["rows"])
        self.rng.bit_generator.state = state["rng"]

    def forward(self):
        parts = [[] for _ in self.param.top]
        needed = self.batch_size
        while needed:
            table = self.tables[self.file_order[self.file_position]]
            rows = self.rows[self.row:self.row + needed]
            for k, array in enumerate(table):
                parts[k].append(array[rows])
            needed -= len(rows)
            self.row += len(rows)
            if self.row == len(self.rows):
                self._next_file()
        return tuple(torch.from_numpy(np.concatenate(p)) for p in parts)


@register("MemoryData")
class MemoryData(CaffeLayer):
    """Batches from arrays given in Python, as Caffe's MemoryDataLayer::Reset:
    layer.reset(data, labels) with N x channels x height x width data (N a
    multiple of batch_size) and N labels; each forward takes the next batch_size
    rows, wrapping around. The arrays are used as given (no transformation)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.memory_data_param
        if bottom_shapes:
            raise self.error("a data layer takes no bottoms")
        if len(param.top) != 2:
            raise self.error(f"makes a data top and a label top, got {len(param.top)} tops")
        if not (p.batch_size and p.channels and p.height and p.width):
            raise self.error("memory_data_param needs batch_size, channels, height and width > 0")
        self.shape = (p.batch_size, p.channels, p.height, p.width)
        self.data = self.labels = None
        self.position = 0

    def reset(self, data, labels):
        data = torch.as_tensor(np.asarray(data, dtype=np.float32))
        labels = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(-1)
        if tuple(data.shape[1:]) != self.shape[1:]:
            raise self.error(f"data of shape {tuple(data.shape)}, expected N x {' x '.join(map(str, self.shape[1:]))}")
        if len(labels) != len(data):
            raise self.error(f"{len(labels)} labels for {len(data)} rows")
        if len(data) == 0 or len(data) % self.shape[0]:
            raise self.error(f"the number of rows ({len(data)}) must be a positive multiple of the batch size "
                             f"{self.shape[0]}")
        self.data, self.labels, self.position = data, labels, 0

    def top_shapes(self):
        return [self.shape, (self.shape[0],)]

    def data_state(self):
        return {"position": int(self.position)}

    def load_data_state(self, state):
        self.position = int(state["position"])

    def forward(self):
        if self.data is None:
            raise self.error("no data: call reset(data, labels) on this layer first")
        rows = slice(self.position, self.position + self.shape[0])
        self.position = (self.position + self.shape[0]) % len(self.data)
        return self.data[rows], self.labels[rows]


@register("HDF5Output")
class HDF5Output(CaffeLayer):
    """Writes its two bottoms to hdf5_output_param.file_name as the datasets
    'data' and 'label' (Caffe's names), truncating the file at set-up. Each
    forward appends its batch (Caffe's layer writes the datasets at each forward,
    and fails at the second one: here the rows of every batch are kept); the
    file is flushed after each batch and closed by close()."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(2)
        if param.top:
            raise self.error("HDF5Output has no tops")
        if not param.hdf5_output_param.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        self.path = param.hdf5_output_param.file_name
        self.file = None

    def top_shapes(self):
        return []

    def _open(self, shapes):
        import h5py

        try:
            self.file = h5py.File(self.path, "w")
        except OSError as err:
            raise self.error(f"cannot write {self.path} ({err})") from None
        for name, shape in zip(("data", "label"), shapes):
            self.file.create_dataset(name, shape=(0,) + tuple(shape[1:]), maxshape=(None,) + tuple(shape[1:]),
                                     dtype="float32")

    def forward(self, data, label):
        arrays = [t.detach().float().cpu().numpy() for t in (data, label)]
        if self.file is None:
            self._open([a.shape for a in arrays])
        for name, array in zip(("data", "label"), arrays):
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(array), axis=0)
            dataset[start:] = array
        self.file.flush()
        return ()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _c_round(value):
    """C's round(): halves away from zero."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


@register("WindowData")
class WindowData(CaffeLayer):
    """R-CNN's window data layer (Caffe master): a window file lists images and
    their boxes with the overlap of each box with the nearest object,

        # <image index>
        <image path>            (window_data_param.root_folder + path)
        <channels> <height> <width>
        <number of windows>
        <class> <overlap> <x1> <y1> <x2> <y2>     (one line per window)

    Windows of overlap >= fg_threshold are foreground (their class, > 0), those
    below bg_threshold background (class 0), the rest unused. Each batch draws
    batch_size - int(batch_size * fg_fraction) background windows, then the
    foreground ones, each at random (with a mirror draw when transform_param.mirror);
    a window grows by context_pad (in output pixels) around it, made square first
    in crop_mode "square", is clipped to the image, warped (bilinear) to
    transform_param.crop_size with the part outside the image left 0, mirrored,
    and has the mean (transform_param.mean_file at the same place, or mean_value)
    subtracted, times window_data_param.scale. Tops: N x C x crop x crop, N labels.
    The draws come from this layer's generator (reseed() as the other data layers)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if bottom_shapes:
            raise self.error("a data layer takes no bottoms")
        if len(param.top) != 2:
            raise self.error(f"makes 2 tops (data, label), the prototxt names {len(param.top)}")
        p, t = param.window_data_param, param.transform_param
        self.p = p
        if not p.batch_size:
            raise self.error("window_data_param.batch_size must be positive")
        self.crop = int(t.crop_size)
        if self.crop <= 0:
            raise self.error("transform_param.crop_size must be positive")
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f"window_data_param.crop_mode must be 'warp' or 'square', got {p.crop_mode!r}")
        if 2 * p.context_pad >= self.crop:
            raise self.error(f"context_pad {p.context_pad} leaves nothing of crop_size {self.crop}")
        self.mirror = t.mirror
        self.images, self.fg, self.bg = [], [], []
        self.channels = self._read_window_file(p.source)
        if self.channels != 3:
            raise self.error(f"{p.source}: the images are read in colour (3 channels), the file says "
                             f"{self.channels}")
        self.mean = self.mean_values = None
        if t.HasField("mean_file") and len(t.mean_value):
            raise self.error("give transform_param.mean_file or mean_value, not both")
        if t.HasField("mean_file"):
            from ssdh_port.caffe import io as caffe_io

            mean = caffe_io.read_blobproto(t.mean_file).astype(np.float32)
            self.mean = mean.reshape(mean.shape[-3:])
            offset = (self.mean.shape[2] - self.crop) // 2
            if offset < 0 or self.mean.shape[1] < self.crop + offset or self.mean.shape[0] != self.channels:
                raise self.error(f"mean file {t.mean_file} of shape {self.mean.shape} does not cover a "
                                 f"{self.channels} x {self.crop} x {self.crop} crop")
        elif len(t.mean_value):
            values = [float(v) for v in t.mean_value]
            if len(values) not in (1, self.channels):
                raise self.error(f"give 1 mean_value or {self.channels}, got {len(values)}")
            self.mean_values = np.array(values * (self.channels if len(values) == 1 else 1), np.float32)
        self.cache = None
        if p.cache_images:
            self.cache = []
            for path, _ in self.images:
                try:
                    with open(path, "rb") as f:
                        self.cache.append(np.frombuffer(f.read(), np.uint8))
                except OSError as err:
                    raise self.error(f"cannot read image {path} ({err.strerror})") from None
        self.rng = np.random.default_rng()

    def _read_window_file(self, source):
        try:
            with open(source) as f:
                tokens = f.read().split()
        except OSError as err:
            raise self.error(f"cannot open window file {source} ({err.strerror})") from None
        if not tokens:
            raise self.error(f"window file {source} is empty")
        position = 0

        def take(kind, what):
            nonlocal position
            if position >= len(tokens):
                raise self.error(f"window file {source}: ends where {what} was expected")
            token = tokens[position]
            position += 1
            try:
                return kind(token)
            except ValueError:
                raise self.error(f"window file {source}: {what} must be {kind.__name__}, got {token!r}") from None

        channels = None
        while position < len(tokens):
            if take(str, "'#'") != "#":
                raise self.error(f"window file {source}: expected '#' before image {len(self.images)}, "
                                 f"got {tokens[position - 1]!r}")
            index = take(int, "the image index")
            path = self.p.root_folder + take(str, "the image path")
            channels, height, width = (take(int, "channels"), take(int, "height"), take(int, "width"))
            self.images.append((path, (channels, height, width)))
            for _ in range(take(int, "the number of windows")):
                label, overlap = take(int, "a window's class"), take(float, "a window's overlap")
                box = [take(int, "a window's x1"), take(int, "y1"), take(int, "x2"), take(int, "y2")]
                if overlap >= self.p.fg_threshold:
                    if label <= 0:
                        raise self.error(f"window file {source}: a foreground window of image {index} "
                                         f"has class {label} (must be > 0)")
                    self.fg.append((index, label, box))
                elif overlap < self.p.bg_threshold:
                    self.bg.append((index, 0, box))
        if not self.fg or not self.bg:
            raise self.error(f"window file {source}: {len(self.fg)} foreground and {len(self.bg)} background "
                             "windows; each batch needs both")
        return channels

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def data_state(self):
        return {"rng": self.rng.bit_generator.state}

    def load_data_state(self, state):
        self.rng.bit_generator.state = state["rng"]

    def top_shapes(self):
        return [(self.p.batch_size, self.channels, self.crop, self.crop), (self.p.batch_size,)]

    def _draw(self):
        return int(self.rng.integers(0, 2 ** 32))

    def _image(self, index):
        if index >= len(self.images):
            raise self.error(f"a window names image {index}, the file lists {len(self.images)}")
        path = self.images[index][0]
        if self.cache is not None:
            image = cv2.imdecode(self.cache[index], cv2.IMREAD_COLOR)
        else:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise self.error(f"cannot read image {path}")
        return image

    def window(self, window, mirror):
        """One window: (crop x crop x 3 uint8 warped pixels, pad_h, pad_w), Caffe's arithmetic."""
        index, _, (x1, y1, x2, y2) = window
        image = self._image(index)
        crop, f32 = self.crop, np.float32
        size = (crop, crop)  # (width, height) to warp to
        pad_h = pad_w = 0
        if self.p.context_pad > 0 or self.p.crop_mode == "square":
            context_scale = f32(crop) / f32(crop - 2 * self.p.context_pad)
            half_h, half_w = f32(y2 - y1 + 1) / f32(2.0), f32(x2 - x1 + 1) / f32(2.0)
            cx, cy = f32(x1) + half_w, f32(y1) + half_h
            if self.p.crop_mode == "square":
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _c_round(cx - half_w * context_scale), _c_round(cx + half_w * context_scale)
            y1, y2 = _c_round(cy - half_h * context_scale), _c_round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - image.shape[1] + 1), max(0, y2 - image.shape[0] + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
            width = _c_round(f32(x2 - x1 + 1) * scale_x)
            height = _c_round(f32(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _c_round(f32(pad_x1) * scale_x), _c_round(f32(pad_x2) * scale_x)
            pad_h = _c_round(f32(pad_y1) * scale_y)
            pad_w = pad_x2 if mirror else pad_x1
            height = min(height, crop - pad_h)
            width = min(width, crop - pad_w)
            size = (width, height)
        if not (0 <= x1 <= x2 < image.shape[1] and 0 <= y1 <= y2 < image.shape[0]):
            raise self.error(f"window ({x1}, {y1}, {x2}, {y2}) of image {self.images[index][0]} lies outside "
                             f"its {image.shape[1]} x {image.shape[0]} pixels")
        warped = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], size, interpolation=cv2.INTER_LINEAR)
        if mirror:
            warped = warped[:, ::-1]
        return warped, pad_h, pad_w

    def forward(self):
        n, crop = self.p.batch_size, self.crop
        data = np.zeros((n, self.channels, crop, crop), np.float32)
        labels = np.zeros(n, np.float32)
        fg_count = int(np.float32(n) * np.float32(self.p.fg_fraction))
        item = 0
        for windows, count in ((self.bg, n - fg_count), (self.fg, fg_count)):
            for _ in range(count):
                window = windows[self._draw() % len(windows)]
                mirror = bool(self.mirror and self._draw() % 2)
                warped, pad_h, pad_w = self.window(window, mirror)
                h, w = warped.shape[:2]
                pixels = warped.transpose(2, 0, 1).astype(np.float32)
                if self.mean is not None:
                    off = (self.mean.shape[2] - crop) // 2
                    pixels = pixels - self.mean[:, off + pad_h:off + pad_h + h, off + pad_w:off + pad_w + w]
                elif self.mean_values is not None:
                    pixels = pixels - self.mean_values[:, None, None]
                data[item, :, pad_h:pad_h + h, pad_w:pad_w + w] = pixels * np.float32(self.p.scale)
                labels[item] = window[1]
                item += 1
        return torch.from_numpy(data), torch.from_numpy(labels)
