"""``python -m freshindex.pipelines.stream``: run the stream (``run.main``)."""

import sys

from freshindex.pipelines.stream.run import main

if __name__ == "__main__":
    sys.exit(main())
