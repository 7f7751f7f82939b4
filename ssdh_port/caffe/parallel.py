"""Caffe's multi-GPU training on torch.distributed (DistributedDataParallel's rules,
written out for the Caffe solver).

Caffe's rules (BVLC master: NCCL solvers, DataLayer::Skip):
- every rank runs the prototxt's batch_size: the effective batch is N times larger;
- rank r's Data layer reads the records whose running offset o satisfies
  o % N == r (the others are skipped), so the ranks of one iteration read N
  consecutive batches' worth of records between them;
- the gradients are summed over the ranks and scaled by 1/N before the update, which
  every rank applies to identical weights (rank 0's initial weights are broadcast);
- only rank 0 displays, tests and writes snapshots. A snapshot records the data
  position at the iteration boundary (offset k * batch_size * N after k
  iterations), so a run resumes with any N.

The ranks themselves (process group, broadcast, gradient averaging, launch) are
ssdh_port.distributed's. Processes come from torchrun (`torchrun
--nproc_per_node=N tools/train_net.py S`: RANK / WORLD_SIZE / LOCAL_RANK in the
environment) or from distributed.launch() (Caffe's `--gpu 0,1,2,3`: one process
per listed GPU). NCCL on GPUs, gloo on CPUs.
"""
import numpy as np
import torch.distributed as dist



def gather_batches(arrays, labels, batch_size, ranks):
    """Rank r extracted the batches r, r + N, ... ({blob: rows}, labels): rank 0 gets
    every batch in the original order (None elsewhere)."""
    gathered = [None] * ranks.world if ranks.root else None
    dist.gather_object((arrays, labels), gathered, dst=0)
    if not ranks.root:
        return None
    rows = [len(next(iter(a.values()))) for a, _ in gathered]
    batches = sum(-(-n // batch_size) for n in rows)
    order = [(b % ranks.world, (b // ranks.world) * batch_size) for b in range(batches)]
    merged = {name: np.concatenate([gathered[r][0][name][s:s + batch_size] for r, s in order])
              for name in arrays}
    has_labels = gathered[0][1] is not None
    merged_labels = (np.concatenate([gathered[r][1][s:s + batch_size] for r, s in order])
                     if has_labels else None)
    return merged, merged_labels
