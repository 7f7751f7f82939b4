"""Train a Caffe net from a solver, as `caffe train -solver S [-weights W]` does.

    ssdh train solver.yaml|solver.prototxt [--weights W.caffemodel|.pt]
        [--resume SNAPSHOT.solverstate|.pt] [--device cpu|cuda:N | --gpu N|N,M,...|all] [--amp]
        [--channels-last] [--tf32] [--compile] [--log-dir DIR] [--solver-set FIELD=VALUE ...]

Several processes train one net as Caffe's multi-GPU training does (each rank runs
batch_size, reads every N-th record, gradients averaged, rank 0 logs, tests and
snapshots; ssdh_port.caffe.parallel, ssdh_port.distributed): `torchrun --nproc_per_node=N
ssdh train S` (gloo on CPUs, NCCL on GPUs), or Caffe's `--gpu 0,1,2,3` /
`--gpu all`, which starts one process per GPU.

SIGINT or SIGTERM stops at the end of the iteration with a snapshot (exit 0),
SIGHUP snapshots and goes on, as Caffe's defaults (--sigint-effect / --sighup-effect).
Snapshot sets are written atomically; <prefix>_latest names the newest complete
one, which --resume latest picks. Relative paths inside the solver and net (net, data sources, mean files,
snapshot_prefix) resolve against the working directory, as in Caffe. Writes
Caffe's display lines to stdout, a JSON-lines log and a PNG of the losses (and
test outputs) to --log-dir (default: the folder of snapshot_prefix), a progress
bar with ETA to stderr, and snapshots <prefix>_iter_<N>.caffemodel/.solverstate/.pt.
"""
import sys

from ssdh_port import cli
from ssdh_port import distributed
from ssdh_port.caffe.solver import read_solver
from ssdh_port.pipeline import set_solver_fields, solver_overrides, train_caffe


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("solver")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--weights", help="initial weights, copied by layer name (fine-tuning)")
    start.add_argument("--resume", help="snapshot to resume from: .solverstate or .pt, 'latest' (the newest "
                       "complete snapshot set of the solver's prefix) or a folder with a *_latest record")
    cli.add_device(parser, default=None)
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast of the training passes (off by default, for fidelity)")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC layout of images and conv weights (for GPU tensor cores)")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 float32 convolutions on the GPU (default: full float32, as Caffe)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the TRAIN net's layers (the same trajectory to float tolerance; "
                        "the first iterations pay the compilation)")
    parser.add_argument("--log-dir", default=None)
    cli.solver_set_argument(parser)
    parser.add_argument("--sigint-effect", default="stop", choices=("stop", "snapshot", "none"),
                        help="on SIGINT / SIGTERM, at the end of the iteration (Caffe's default: stop, "
                        "with a snapshot)")
    parser.add_argument("--sighup-effect", default="snapshot", choices=("stop", "snapshot", "none"),
                        help="on SIGHUP (default: snapshot and go on)")
    args = parser.parse_args(argv)
    if args.device and args.device.startswith("cuda:") and not args.device[5:].isdigit():
        # Caffe's --gpu 0,1,2,3: one process per GPU, ranks of one training.
        return distributed.launch([sys.executable, "-m", "ssdh_port", "train"], sys.argv[1:] if argv is None else argv,
                                  distributed.parse_gpus(args.device[5:]))
    param = set_solver_fields(read_solver(args.solver), solver_overrides(args.solver_set))
    result = train_caffe(param, weights=args.weights, resume=args.resume, device=args.device,
                         amp=args.amp, channels_last=args.channels_last, tf32=args.tf32, compile=args.compile,
                         log_dir=args.log_dir, display=lambda line: print(line, flush=True),
                         sigint_effect=args.sigint_effect, sighup_effect=args.sighup_effect)
    if result.stopped_early:
        print(f"stopped early at iteration {result.iterations}; resume with --resume latest")
    print(f"log: {result.log}; plot: {result.plot}")
    return 0

