"""Change a code file in place, as a live index (ssdh_port.hashing.live): each change
is on disk (fsync'd) when the command ends; searches, encode's model card and the
service read the file with its changes.

    ssdh index add INDEX SOURCE.ssdh [--upsert]     the items of another code file (e.g.
                                                    new images encoded with ssdh encode)
    ssdh index remove INDEX ID [ID ...]
    ssdh index compact INDEX                        fold the log of changes into the file
    ssdh index info INDEX                           items, removed-but-not-compacted, generation

One writer at a time: a second one (another command, a writable server) is refused.
"""
import json

from ssdh_port import cli
from ssdh_port.hashing import HammingIndex, LiveIndex
from ssdh_port.errors import SSDHError


def main(argv=None):
    parser = cli.parser(__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="add|remove|compact|info")
    add = actions.add_parser("add", help="add the items of another code file")
    add.add_argument("index")
    add.add_argument("source", help="a code file of the same code length (its ids and labels come along)")
    add.add_argument("--upsert", action="store_true", help="replace items whose ids are already in the index")
    remove = actions.add_parser("remove", help="remove items by id")
    remove.add_argument("index")
    remove.add_argument("ids", nargs="+", type=int)
    for name, what in (("compact", "fold the log into the code file"), ("info", "what the index holds")):
        actions.add_parser(name, help=what).add_argument("index")
    args = parser.parse_args(argv)
    with LiveIndex(args.index) as live:
        if args.action == "add":
            source = HammingIndex.load(args.source)
            if source.bits != live.bits:
                raise SSDHError(f"{args.source} holds {source.bits}-bit codes, {args.index} {live.bits}-bit ones")
            if not len(source):
                raise SSDHError(f"{args.source} holds no items")
            live.add(source.codes, source.ids.numpy(), None if source.labels is None else source.labels.numpy(),
                     upsert=args.upsert)
            print(f"added {len(source)} items to {args.index}: {len(live)} now")
        elif args.action == "remove":
            live.remove(args.ids)
            print(f"removed {len(args.ids)} items from {args.index}: {len(live)} now")
        elif args.action == "compact":
            live.compact()
            print(f"compacted {args.index}: {len(live)} items, generation {live.generation}")
        else:
            print(json.dumps(live.info(), indent=1))
    return 0
