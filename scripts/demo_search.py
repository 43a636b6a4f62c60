"""Print the best chunk for a question (used by scripts/demo)."""

import argparse
import logging
import textwrap

from query.retrieval import vector_search

logging.disable(logging.WARNING)
parser = argparse.ArgumentParser()
parser.add_argument("question")
parser.add_argument("--db", required=True)
parser.add_argument("--table", required=True)
parser.add_argument("-k", type=int, default=1)
args = parser.parse_args()
for hit in vector_search(args.db, args.table, args.question, k=args.k):
    print(f"{hit.doc_id}  score={hit.score:.3f}  version={hit.table_version}")
    print(textwrap.indent(textwrap.shorten(hit.text, 400), "    "))
