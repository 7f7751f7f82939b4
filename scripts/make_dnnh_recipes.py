#!/usr/bin/env python
"""Write prototxt/dnnh{12,24,32,48} from the caffe-dnnh author's nets
(ssdh_port.pipeline.dnnh.write_recipe; 32 bits derived from the 48-bit nets).

    python scripts/make_dnnh_recipes.py [--author ../shared/data/ssdh-reference/caffe-dnnh/runtime]
"""
import argparse
import os

from ssdh_port.pipeline.dnnh import write_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--author", default=os.path.join(ROOT, "..", "shared", "data", "ssdh-reference",
                                                         "caffe-dnnh", "runtime"))
    args = parser.parse_args()
    for bits in (12, 24, 32, 48):
        print(write_recipe(args.author, bits, os.path.join(ROOT, "prototxt", f"dnnh{bits}")))
