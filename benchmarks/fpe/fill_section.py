"""Replace the text between <!-- section:fpe --> and <!-- /section:fpe --> in a file (only there)."""

import sys
from pathlib import Path

path, body = Path(sys.argv[1]), Path(sys.argv[2]).read_text().strip("\n")
text = path.read_text()
start, end = "<!-- section:fpe -->", "<!-- /section:fpe -->"
i, j = text.index(start) + len(start), text.index(end)
path.write_text(text[:i] + "\n" + body + "\n" + text[j:])
