"""Print the best chunks for a question (used by scripts/demo); `freshindex search` does more."""

import argparse
import logging
import textwrap

from freshindex.query.retrieval import IndexReader, retrieve
from freshindex.query.types import MODES

logging.disable(logging.WARNING)
parser = argparse.ArgumentParser()
parser.add_argument("question")
parser.add_argument("--db", required=True)
parser.add_argument("--table", required=True)
parser.add_argument("-k", type=int, default=1)
parser.add_argument("--mode", choices=MODES, default="hybrid")
parser.add_argument("--as-of", dest="as_of", help="version number, tag or run id")
args = parser.parse_args()
reader = IndexReader.open(args.db, args.table)
for hit in retrieve(reader, args.question, mode=args.mode, k=args.k, as_of=args.as_of):
    print(f"{hit.doc_id}  score={hit.score:.3f}  {hit.mode}  version={hit.table_version}")
    print(textwrap.indent(textwrap.shorten(hit.text, 400), "    "))
