"""Train a Caffe net from a solver, as `caffe train -solver S [-weights W]` does.

    ssdh train solver.yaml|solver.prototxt [--weights W.caffemodel|.pt]
        [--resume SNAPSHOT.solverstate|.pt] [--device cpu|cuda:N | --gpu N|N,M,...|all]
        [--nproc N] [--amp] [--channels-last] [--tf32] [--compile] [--log-dir DIR]
        [--solver-set FIELD=VALUE ...]

Several processes train one net as Caffe's multi-GPU training does (each rank runs
batch_size, reads every N-th record, gradients averaged, rank 0 logs, tests and
snapshots; ssdh_port.caffe.parallel, ssdh_port.distributed): `--nproc N` (N CPU
processes, gloo), Caffe's `--gpu 0,1,2,3` / `--gpu all` (one process per GPU, NCCL),
or `torchrun --nproc_per_node=N -m ssdh_port train S`. With --nproc and --gpu,
Ctrl-C stops every rank with a snapshot and the command exits 0, as one process
does; torchrun stops the ranks the same way but then prints a SignalException
traceback and exits 1.

SIGINT or SIGTERM stops at the end of the iteration with a snapshot (exit 0),
SIGHUP snapshots and goes on, as Caffe's defaults (--sigint-effect / --sighup-effect).
Snapshot sets are written atomically; <prefix>_latest names the newest complete
one (by names relative to itself: a run folder can be moved), which --resume latest
picks. Relative paths inside the solver and net (net, data sources, mean files,
snapshot_prefix) resolve against the working directory, as in Caffe. Writes Caffe's
display lines to stdout, a JSON-lines log and a PNG of the losses (and test outputs)
to --log-dir (default: the folder of snapshot_prefix), a progress bar with ETA to
stderr on a terminal, and snapshots <prefix>_iter_<N>.caffemodel/.solverstate/.pt.
"""
import os
import sys

from ssdh_port import cli, distributed
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
    parser.add_argument("--nproc", type=int, default=0,
                        help="train as N CPU processes, ranks of one training (gloo), as torchrun would; "
                        "Ctrl-C ends it as it ends one process")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16: bfloat16 autocast of the training passes (weights, gradients and the "
                        "update stay float32); fp32 (the default) keeps Caffe's numbers")
    parser.add_argument("--amp", action="store_true", help="the same as --precision bf16")
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
    launcher = [sys.executable, "-m", "ssdh_port", "train"]
    forwarded = distributed.without_options(sys.argv[1:] if argv is None else argv, ("--nproc",))
    if args.device and args.device.startswith("cuda:") and not args.device[5:].isdigit():
        # Caffe's --gpu 0,1,2,3: one process per GPU, ranks of one training.
        if args.nproc:
            parser.error("--nproc starts CPU processes; --gpu 0,1,... one process per GPU: give one")
        return distributed.launch(launcher, forwarded, gpus=distributed.parse_gpus(args.device[5:]))
    if args.nproc:
        if args.nproc < 1:
            parser.error(f"--nproc must be at least 1, got {args.nproc}")
        if args.device and args.device != "cpu":
            parser.error("--nproc starts CPU processes; for GPUs give --gpu 0,1,...")
        if args.nproc > 1:
            return distributed.launch(launcher, forwarded, nproc=args.nproc)
    param = set_solver_fields(read_solver(args.solver), solver_overrides(args.solver_set))
    result = train_caffe(param, weights=args.weights, resume=args.resume, device=args.device,
                         amp=args.amp or args.precision == "bf16", channels_last=args.channels_last, tf32=args.tf32,
                         compile=args.compile,
                         log_dir=args.log_dir, display=lambda line: print(line, flush=True),
                         sigint_effect=args.sigint_effect, sighup_effect=args.sighup_effect)
    if result.stopped_early:
        print(f"stopped early at iteration {result.iterations}; resume with --resume latest")
    if result.log != os.devnull:  # rank 0 (or the only process) keeps the log
        print(f"log: {result.log}; plot: {result.plot}")
    return 0
