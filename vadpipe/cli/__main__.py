"""``python -m vadpipe.cli``."""

import vadpipe.cli  # noqa: F401  (registers the commands)
from vadpipe.cli.main import main

if __name__ == "__main__":
    main()
